"""Tiny random models of real architectures and a tiny real tokenizer, built in-process.

Tests and CPU benchmarks use these instead of hub downloads: the module structure, attention
implementation and parameter names are those of the real architectures, only the sizes shrink.
"""

from __future__ import annotations

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. What is the capital of France? Paris.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Was ist die Hauptstadt von Frankreich?",
    "敏捷的棕色狐狸跳过了懒狗。法国的首都是什么？巴黎。",
    "빠른 갈색 여우가 게으른 개를 뛰어넘는다. 프랑스의 수도는 어디입니까?",
    "Mbweha mwepesi wa kahawia anaruka juu ya mbwa mvivu. Jibu swali hili.",
    "Write a short poem about the sea. Explain how photosynthesis works in plants.",
    "Schreibe ein kurzes Gedicht über das Meer. Erkläre, wie Photosynthese funktioniert.",
    "def add(a, b):\n    return a + b\n```python\nprint('hello world')\n```",
    "Answer: A B C D Antwort: Passage Question Dokument Frage 1. 2. 3. - * # ## ###",
]


def tiny_tokenizer(chat_template: bool = True, vocab_size: int = 400):
    """A byte-level BPE tokenizer (any Unicode text round-trips) with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat_template:
        fast.chat_template = CHATML_TEMPLATE
        fast.eos_token = "<|im_end|>"
    return fast


ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma", "gemma3", "gpt2", "phi3")


def tiny_config(arch: str, vocab_size: int = 512, hidden: int = 32, layers: int = 2):
    import transformers as tf

    common = {"vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden,
                  "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "max_position_embeddings": 512, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if arch == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=False)
    if arch == "mistral":
        return tf.MistralConfig(**common, sliding_window=None, tie_word_embeddings=False)
    if arch == "qwen2":
        return tf.Qwen2Config(**common, tie_word_embeddings=True)
    if arch == "gemma":
        return tf.GemmaConfig(**common, head_dim=hidden // 4)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(**common, head_dim=hidden // 4, sliding_window=16,
                                   layer_types=["sliding_attention", "full_attention"][:layers])
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4,
                             n_positions=512, bos_token_id=1, eos_token_id=2)
    if arch == "phi3":
        return tf.Phi3Config(**common, tie_word_embeddings=False)
    from clo.registry import unknown_name_message

    raise ValueError(unknown_name_message("tiny architecture", arch, ARCHITECTURES))


def tiny_model(arch: str = "llama", seed: int = 0, **kwargs):
    """A randomly initialised causal LM of ``arch`` (float32, eval mode, eager-compatible)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **kwargs))
    return model.eval()
