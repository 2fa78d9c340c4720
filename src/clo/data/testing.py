"""A tiny random M2M100 translation model with a real M2M100 tokenizer, built in-process.

Tests and the CPU run of ``bench/translate_throughput.py`` use it in place of
facebook/m2m100_1.2B: the architecture, the tokenizer class, the language tokens and the forced
BOS mechanism are the real ones, only the sizes shrink (a sentencepiece model trained on a few
sentences, two layers of width 32 unless asked otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. What is the capital of France? Paris.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Was ist die Hauptstadt von Frankreich?",
    "Write a short poem about the sea. Explain how photosynthesis works in plants.",
    "Schreibe ein kurzes Gedicht über das Meer. Erkläre, wie Photosynthese funktioniert.",
    "Here are three tips for better sleep: go to bed early, avoid screens, and keep the room dark.",
    "Hier sind drei Tipps für besseren Schlaf: früh ins Bett gehen, Bildschirme meiden.",
]


def tiny_m2m100(out_dir: str | Path, *, d_model: int = 32, layers: int = 2, heads: int = 4,
                ffn: int | None = None, vocab_size: int | None = None, seed: int = 0,
                max_positions: int = 256, dtype=None) -> Path:
    """Save a random M2M100 model and its M2M100Tokenizer to ``out_dir``; return the directory.

    ``vocab_size`` larger than the tokenizer's (about 250) pads the embedding with fairseq's
    "madeupword" slots, as the real checkpoints do; the throughput bench uses it for the
    M2M100-1.2B shapes (``d_model=1024, layers=24, heads=16, ffn=8192, vocab_size=128112``).
    """
    import sentencepiece as spm
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    out = Path(out_dir)
    work = out / "_spm"
    work.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4), model_prefix=str(work / "spm"), vocab_size=150,
        model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1,
        hard_vocab_limit=False, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(work / "spm.model"))
    # fairseq's dictionary order: specials first, then the sentencepiece pieces.
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    (work / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    # Real checkpoints list the language tokens as additional special tokens in their
    # tokenizer config; the constructor alone does not add them.
    lang_tokens = [f"__{c}__" for c in FAIRSEQ_LANGUAGE_CODES["m2m100"]]
    tok = M2M100Tokenizer(vocab_file=str(work / "vocab.json"), spm_file=str(work / "spm.model"),
                          src_lang="en", tgt_lang="de", additional_special_tokens=lang_tokens,
                          num_madeup_words=0)
    base = max(tok.lang_token_to_id.values()) + 1
    # By default no "madeupword" slots: a random model could emit them, and they decode
    # differently in transformers ("<unk>") and CTranslate2 ("").
    tok.num_madeup_words = max(0, (vocab_size or base) - base)
    vocab_size = base + tok.num_madeup_words
    cfg = M2M100Config(
        vocab_size=vocab_size, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn or 2 * d_model,
        decoder_ffn_dim=ffn or 2 * d_model, max_position_embeddings=max_positions, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    )
    torch.manual_seed(seed)
    model = M2M100ForConditionalGeneration(cfg).eval()
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
