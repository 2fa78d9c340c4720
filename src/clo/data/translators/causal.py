"""``causal``: a causal LM prompted with a few-shot translation prompt, one line at a time.

Greedy; stops at the first generated line break, never before the first token
(``begin_suppress_tokens``), and at a loop (:func:`loop_detected`). The few-shot prefix's KV
cache is computed once per language pair and shared by every batch (``prefix_cache``).
Offline default ``gemma-3-270m``.
"""

from __future__ import annotations

import copy
import functools

from clo import languages
from clo.data.config import TranslatorConfig
from clo.data.translators.base import LocalModelTranslator, MemoryModel, TranslationError, activation_bytes

# Tokens of the few-shot prefix (three example pairs) kept per batch row; the estimate of the
# batch budget counts them.
_PREFIX_TOKENS = 160
_ROW_TOKENS = 16  # a row's fixed cost is spread over this many source tokens (see seq2seq)

# Parallel example sentences: the few-shot prompt for src->tgt takes FEW_SHOT[src][i] ->
# FEW_SHOT[tgt][i]. Short, everyday, one line each, as the segments are.
FEW_SHOT: dict[str, tuple[str, ...]] = {
    "en": ("How do I make a good cup of tea?", "Water boils at 100 degrees Celsius.",
           "Here are three tips for better sleep:"),
    "de": ("Wie mache ich eine gute Tasse Tee?", "Wasser kocht bei 100 Grad Celsius.",
           "Hier sind drei Tipps für besseren Schlaf:"),
    "zh": ("我怎样才能泡一杯好茶？", "水在摄氏100度时沸腾。", "以下是改善睡眠的三个建议："),
    "ko": ("맛있는 차 한 잔은 어떻게 만드나요?", "물은 섭씨 100도에서 끓습니다.", "더 나은 수면을 위한 세 가지 팁은 다음과 같습니다:"),
    "id": ("Bagaimana cara membuat secangkir teh yang enak?", "Air mendidih pada suhu 100 derajat Celsius.",
           "Berikut tiga tips untuk tidur yang lebih nyenyak:"),
    "sw": ("Ninawezaje kutengeneza kikombe kizuri cha chai?", "Maji huchemka kwa nyuzi joto 100 za Selsiasi.",
           "Hapa kuna vidokezo vitatu vya kulala vizuri zaidi:"),
    "yo": ("Báwo ni mo ṣe lè ṣe ife tii tó dára?", "Omi máa ń hó ní ìwọ̀n ọgọ́rùn-ún Celsius.",
           "Àwọn ìmọ̀ràn mẹ́ta fún oorun tó dára jù nìyí:"),
}


def few_shot_prefix(src_lang: str, tgt_lang: str, shots: int = 3) -> str:
    """The part of the causal prompt shared by every segment of a language pair."""
    for code in (src_lang, tgt_lang):
        if code not in FEW_SHOT:
            raise TranslationError(
                f"the causal translator has no few-shot examples for {code!r}; add them to "
                "clo.data.translators.causal.FEW_SHOT (known: " + ", ".join(sorted(FEW_SHOT)) + ")"
            )
    s, t = languages.get(src_lang).name, languages.get(tgt_lang).name
    lines = [f"Translate {s} to {t}.", ""]
    for a, b in list(zip(FEW_SHOT[src_lang], FEW_SHOT[tgt_lang]))[:shots]:
        lines += [f"{s}: {a}", f"{t}: {b}", ""]
    return "\n".join(lines) + "\n"


def few_shot_suffix(text: str, src_lang: str, tgt_lang: str) -> str:
    s, t = languages.get(src_lang).name, languages.get(tgt_lang).name
    return f"{s}: {text}\n{t}:"


def few_shot_prompt(text: str, src_lang: str, tgt_lang: str, shots: int = 3) -> str:
    """The causal translator's prompt; the model continues it with the translation and a newline."""
    return few_shot_prefix(src_lang, tgt_lang, shots) + few_shot_suffix(text, src_lang, tgt_lang)


@functools.cache
def _cache_kw() -> str:
    """Recent transformers name the KV cache ``cache`` (``past_key_values`` is deprecated); older ones
    only know ``past_key_values``."""
    try:
        from transformers.modeling_outputs import CausalLMOutputWithPast
    except ImportError:  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def loop_detected(generated, n: int = 4, times: int = 3):
    """Per row: does the row's last ``n``-gram occur at least ``times`` times in the row?

    ``generated``: (batch, steps) token ids. A few-shot translator that starts repeating itself
    ("der/der/der/...") never reaches its line break and would hold its whole batch until the
    length bound; such a row is stopped here (its translation fails the repetition check anyway).
    """
    import torch

    b, steps = generated.shape
    if steps < n * times:
        return torch.zeros(b, dtype=torch.bool, device=generated.device)
    windows = generated.unfold(1, n, 1)  # (batch, steps - n + 1, n)
    last = generated[:, -n:].unsqueeze(1)
    return (windows == last).all(-1).sum(-1) >= times


def _loop_stop(start: int):
    """A transformers stopping criterion around :func:`loop_detected` (generated part only)."""
    from transformers import StoppingCriteria

    class LoopStop(StoppingCriteria):
        def __call__(self, input_ids, scores=None, **kwargs):
            return loop_detected(input_ids[:, start:])

    return LoopStop()


class CausalTranslator(LocalModelTranslator):
    kind = "causal"

    def __init__(self, cfg: TranslatorConfig):
        super().__init__(cfg)
        from clo.models import load_tokenizer

        self.tokenizer = load_tokenizer(cfg.model)
        self._stop_ids: list[int] | None = None
        self._prefixes: dict = {}

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _load(self):
        if self._model is None:
            from clo.models import load_model

            self._model, _ = load_model(self.cfg.model, dtype=self.cfg.dtype, device=self.device)
        return self._model

    def stop_token_ids(self) -> list[int]:
        """EOS and every vocabulary token that contains a line break (the end of a translation)."""
        if self._stop_ids is None:
            ids = set()
            for tok, i in self.tokenizer.get_vocab().items():
                # sentencepiece spells it "\n" or "<0x0A>", byte-level BPE "Ċ".
                if "\n" in tok or "Ċ" in tok or tok == "<0x0A>":
                    ids.add(i)
            for name in ("eos_token_id",):
                v = getattr(self.tokenizer, name, None)
                if v is not None:
                    ids.add(v)
            self._stop_ids = sorted(ids)
        return self._stop_ids

    def fingerprint_fields(self) -> dict:
        from clo.models import resolve_dtype

        dtype = str(resolve_dtype(self.cfg.dtype, self.device)).removeprefix("torch.")
        return {**super().fingerprint_fields(), "dtype": dtype, "stop": "newline+nonempty+loop",
                "prefix": "cached" if self.cfg.prefix_cache else "full"}

    def memory_model(self) -> MemoryModel:
        from transformers import AutoConfig

        from clo.models import resolve, resolve_dtype

        c = AutoConfig.from_pretrained(resolve(self.cfg.model))
        c = c.get_text_config() if hasattr(c, "get_text_config") else c
        d, n_layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
        heads = c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or d // heads
        kv_heads = getattr(c, "num_key_value_heads", None) or heads
        ffn = getattr(c, "intermediate_size", 4 * d)
        dtype = str(resolve_dtype(self.cfg.dtype, self.device)).removeprefix("torch.")
        e = self.ELEMENT_BYTES.get(dtype, 4)
        params = vocab * d + n_layers * (d * head_dim * (2 * heads + 2 * kv_heads) + 3 * d * ffn)
        kv = 2 * n_layers * kv_heads * head_dim * activation_bytes(dtype)
        ratio, extra = self.cfg.max_new_tokens_ratio, self.cfg.max_new_tokens_extra
        # Per source token: its keys and values and those of the ~ratio tokens generated for
        # it, and the prefill's activations; per row: the few-shot prefix's copy, the extra
        # tokens, float32 logits and their copies.
        per_token = kv * (1 + ratio) + activation_bytes(dtype) * (d + ffn)
        per_row = kv * (_PREFIX_TOKENS + extra) + 3 * 4 * vocab
        return MemoryModel(int(params * e), per_token + per_row / _ROW_TOKENS)

    def _prefix(self, src_lang: str, tgt_lang: str):
        """(prefix ids, KV cache of the prefix) for a language pair, computed once."""
        import torch

        key = (src_lang, tgt_lang)
        if key not in self._prefixes:
            ids = self.tokenizer(few_shot_prefix(src_lang, tgt_lang), return_tensors="pt")["input_ids"].to(self.device)
            with torch.inference_mode():
                out = self._load()(input_ids=ids, use_cache=True)
                cache = out.cache if _cache_kw() == "cache" else out.past_key_values
            self._prefixes[key] = (ids, cache)
        return self._prefixes[key]

    def translate_batch(self, texts, src_lang, tgt_lang):
        import torch
        from transformers import StoppingCriteriaList

        model = self._load()
        bounds = [self.max_new_tokens(self.count_tokens(t)) for t in texts]
        self.tokenizer.padding_side = "left"
        # A line break (or EOS) as the very first token would be an empty translation: the model
        # must say something before it stops.
        gen = {"do_sample": False, "num_beams": 1, "max_new_tokens": max(bounds), "eos_token_id": self.stop_token_ids(),
                   "begin_suppress_tokens": self.stop_token_ids(), "pad_token_id": self.tokenizer.pad_token_id}
        if self.cfg.prefix_cache:
            # The few-shot examples are the same for every segment: their keys and values are
            # computed once and copied into each batch, which then only prefills its own
            # segments. Padding sits between the prefix and each segment, masked out; position
            # ids follow the mask, so every segment sees exactly the unpadded prompt.
            prefix_ids, prefix_cache = self._prefix(src_lang, tgt_lang)
            enc = self.tokenizer([few_shot_suffix(t, src_lang, tgt_lang) for t in texts], return_tensors="pt",
                                 padding=True, add_special_tokens=False).to(self.device)
            n = len(texts)
            input_ids = torch.cat([prefix_ids.expand(n, -1), enc["input_ids"]], dim=1)
            mask = torch.cat([torch.ones_like(prefix_ids).expand(n, -1), enc["attention_mask"]], dim=1)
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(n)
            start = input_ids.shape[1]
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids, attention_mask=mask, **{_cache_kw(): cache}, **gen,
                                     stopping_criteria=StoppingCriteriaList([_loop_stop(start)]))
        else:
            enc = self.tokenizer([few_shot_prompt(t, src_lang, tgt_lang) for t in texts], return_tensors="pt",
                                 padding=True).to(self.device)
            start = enc["input_ids"].shape[1]
            with torch.inference_mode():
                out = model.generate(**enc, **gen, stopping_criteria=StoppingCriteriaList([_loop_stop(start)]))
        new = out[:, start:].tolist()
        # Each row keeps its own bound: a translation does not depend on its batch.
        decoded = [self.tokenizer.decode(row[:b], skip_special_tokens=True) for row, b in zip(new, bounds)]
        return [d.split("\n", 1)[0].strip() for d in decoded]

    def close(self):
        super().close()
        self._prefixes = {}
