"""``seq2seq``: M2M100 / NLLB-200, on CTranslate2 (when installed) or transformers ``generate``.

The source language is set on the tokenizer, the target language forced as the first generated
token (``forced_bos_token_id``; CTranslate2: ``target_prefix``). ``backend: auto`` takes
CTranslate2 when the package is installed (:mod:`clo.data.translators.ct2`: compute type,
conversion once, converted directories). ``data.translator.model`` may be a directory made by
``ct2-transformers-converter``: it is used as it is, on CTranslate2 only; its tokenizer is
``data.translator.tokenizer``, or the directory itself when it holds tokenizer files
(``ct2-transformers-converter --copy_files``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import clo.data.translators.ct2 as ct2
from clo import languages
from clo.data.translators.base import (
    LocalModelTranslator,
    MemoryModel,
    TranslationError,
    activation_bytes,
    log,
)

if TYPE_CHECKING:
    from clo.data.config import TranslatorConfig

# Per-token estimate of a converted directory, whose config does not give the shapes: NLLB-200
# 3.3B's (the largest common M2M100-architecture model), so the estimate errs on the safe side.
_FALLBACK_SHAPES = {"d_model": 2048, "encoder_layers": 24, "decoder_layers": 24, "encoder_ffn_dim": 8192,
                    "decoder_ffn_dim": 8192, "vocab_size": 256206}
# A batch row's fixed cost (its output logits, the bound's extra tokens) is spread over this
# many source tokens: short segments cost more per token than the estimate says otherwise.
_ROW_TOKENS = 16
_WARNED: set[str] = set()


def _lang_token(tokenizer, code: str) -> str:
    """The language token of ``code`` in an M2M100 (``__de__``) or NLLB (``deu_Latn``) vocabulary."""
    lang = languages.get(code)
    candidates = [f"__{lang.m2m100}__" if lang.m2m100 else None, lang.nllb]
    # M2M100Tokenizer keeps its language tokens apart from the vocabulary (lang_token_to_id).
    special = getattr(tokenizer, "lang_token_to_id", {})
    unk = tokenizer.unk_token_id
    for tok in candidates:
        if tok and (tok in special or tokenizer.convert_tokens_to_ids(tok) not in (None, unk)):
            return tok
    raise TranslationError(
        f"the tokenizer of this seq2seq model has no language token for {code!r} (looked for "
        f"{[c for c in candidates if c]}); is it an M2M100 or NLLB-200 model?"
    )


class Seq2SeqTranslator(LocalModelTranslator):
    kind = "seq2seq"

    def __init__(self, cfg: TranslatorConfig):
        super().__init__(cfg)
        from transformers import AutoTokenizer

        from clo.models import resolve

        self.path = resolve(cfg.model)
        self.converted = ct2.is_ct2_model_dir(self.path)
        self.backend = self._choose_backend(cfg.backend)
        if self.converted and self.backend != "ctranslate2":
            raise TranslationError(f"{cfg.model} is a CTranslate2 model directory: it runs on backend "
                                   f"ctranslate2 only (data.translator.backend is {cfg.backend})")
        self.tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_source())
        self.compute = (ct2.compute_type(cfg.dtype, self.device) if self.backend == "ctranslate2"
                        else self._torch_dtype_name())

    def _choose_backend(self, backend: str) -> str:
        if backend != "auto":
            return backend
        try:
            import ctranslate2  # noqa: F401
        except (ImportError, OSError):  # OSError: a shared library it links is missing
            if self.converted:
                raise TranslationError(f"{self.cfg.model} is a CTranslate2 model directory: install "
                                       "ctranslate2 (pip install ctranslate2)") from None
            return "transformers"
        if self.device.startswith("cuda"):
            problem = ct2.cuda_problem()
            if problem is not None:
                if self.converted:
                    raise TranslationError(f"{self.cfg.model} is a CTranslate2 model directory, but {problem}")
                if problem not in _WARNED:  # once per process, not once per translator made
                    _WARNED.add(problem)
                    log.warning("data.translator.backend auto: %s; translating with transformers instead", problem)
                return "transformers"
        return "ctranslate2"

    def _tokenizer_source(self) -> str:
        if self.cfg.tokenizer:
            from clo.models import resolve

            return resolve(self.cfg.tokenizer)
        if self.converted and not ct2.has_tokenizer_files(self.path):
            raise TranslationError(
                f"{self.cfg.model} is a CTranslate2 model directory without tokenizer files: set "
                "data.translator.tokenizer to the original model (e.g. facebook/m2m100_1.2B), or convert "
                "with ct2-transformers-converter --copy_files tokenizer_config.json sentencepiece.bpe.model "
                "vocab.json special_tokens_map.json"
            )
        return self.path

    def _torch_dtype_name(self) -> str:
        from clo.models import resolve_dtype

        return str(resolve_dtype(self.cfg.dtype, self.device)).removeprefix("torch.")

    def fingerprint_fields(self) -> dict:
        # The runtime and its precision change the numbers, hence some translations; the
        # device and batch sizes do not (each segment is cut at its own bound).
        fields = super().fingerprint_fields()
        if self.cfg.tokenizer:
            fields["tokenizer"] = self.cfg.tokenizer
        return {**fields, "backend": self.backend, "compute": self.compute}

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _set_src(self, src_lang: str) -> None:
        tok = _lang_token(self.tokenizer, src_lang)
        # M2M100Tokenizer takes the bare code ("de"), NLLB the FLORES code (the token itself).
        self.tokenizer.src_lang = tok.strip("_") if tok.startswith("__") else tok

    # -- device memory -> batch budget ------------------------------------------------------

    def _shapes(self) -> dict:
        if self.converted:
            return dict(_FALLBACK_SHAPES)
        p = Path(self.path) / "config.json"
        if p.is_file():
            c = json.loads(p.read_text(encoding="utf-8"))
        else:  # a hub id: its config (from the hub cache)
            from transformers import AutoConfig

            c = AutoConfig.from_pretrained(self.path).to_dict()
        return {k: c.get(k) or v for k, v in _FALLBACK_SHAPES.items()}

    def memory_model(self) -> MemoryModel:
        s = self._shapes()
        d, ld, vocab = s["d_model"], s["decoder_layers"], s["vocab_size"]
        if self.converted:
            weights = (Path(self.path) / "model.bin").stat().st_size
        else:
            params = (vocab * d + s["encoder_layers"] * (4 * d * d + 2 * d * s["encoder_ffn_dim"])
                      + ld * (8 * d * d + 2 * d * s["decoder_ffn_dim"]))
            weights = params * self.ELEMENT_BYTES.get(self.compute, 4)
        act = activation_bytes(self.compute)
        ratio, extra = self.cfg.max_new_tokens_ratio, self.cfg.max_new_tokens_extra
        # Per source token: the cross-attention keys and values of every decoder layer, the
        # self-attention cache of the ~ratio tokens generated for it, the encoder's activations.
        per_token = act * (2 * ld * d * (1 + ratio) + d + s["encoder_ffn_dim"])
        # Per row: the self-attention cache of the extra tokens, float32 logits and their copies.
        per_row = act * 2 * ld * d * extra + 3 * 4 * vocab
        return MemoryModel(int(weights), per_token + per_row / _ROW_TOKENS)

    # -- transformers ------------------------------------------------------------------------

    def _hf_model(self):
        if self._model is None:
            from transformers import AutoModelForSeq2SeqLM

            from clo.models import resolve_dtype

            dtype = resolve_dtype(self.cfg.dtype, self.device)
            self._model = AutoModelForSeq2SeqLM.from_pretrained(self.path, dtype=dtype).to(self.device).eval()
        return self._model

    def generate_ids(self, texts: list[str], src_lang: str, tgt_lang: str):
        """transformers backend: the generated ids (decoder start, target language token, ...)."""
        import torch

        self._set_src(src_lang)
        tgt_tok = _lang_token(self.tokenizer, tgt_lang)
        model = self._hf_model()
        enc = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
        with torch.inference_mode():
            return model.generate(
                **enc, forced_bos_token_id=self.tokenizer.convert_tokens_to_ids(tgt_tok),
                do_sample=False, num_beams=1, max_new_tokens=1 + max(self._bounds(texts)),
            )

    def _bounds(self, texts: list[str]) -> list[int]:
        return [self.max_new_tokens(self.count_tokens(t)) for t in texts]

    def _translate_hf(self, texts, src_lang, tgt_lang):
        out = self.generate_ids(texts, src_lang, tgt_lang)
        # Row i keeps at most its own bound of tokens after the decoder start and language
        # token: a translation does not depend on the batch it was in.
        return [self.tokenizer.decode(row[2:2 + b], skip_special_tokens=True).strip()
                for row, b in zip(out.tolist(), self._bounds(texts))]

    # -- CTranslate2 -------------------------------------------------------------------------

    def _ct2_model(self):
        if self._model is None:
            self._model = ct2.load_ctranslate2(self.path, self.device, self.cfg.dtype)
        return self._model

    def _translate_ct2(self, texts, tgt_tok):
        model = self._ct2_model()
        sources = [self.tokenizer.convert_ids_to_tokens(self.tokenizer(t)["input_ids"]) for t in texts]
        bounds = self._bounds(texts)
        results = model.translate_batch(
            sources, target_prefix=[[tgt_tok]] * len(texts), beam_size=1,
            max_decoding_length=1 + max(bounds), max_batch_size=len(texts),
        )
        out = []
        for r, b in zip(results, bounds):
            toks = r.hypotheses[0][1:1 + b]  # drop the forced language token
            ids = self.tokenizer.convert_tokens_to_ids(toks)
            out.append(self.tokenizer.decode(ids, skip_special_tokens=True).strip())
        return out

    def translate_batch(self, texts, src_lang, tgt_lang):
        if self.backend == "ctranslate2":
            self._set_src(src_lang)
            return self._translate_ct2(texts, _lang_token(self.tokenizer, tgt_lang))
        return self._translate_hf(texts, src_lang, tgt_lang)
