"""``causal``: a causal LM prompted with a few-shot translation prompt, one line at a time.

Greedy; stops at the first generated line break, never before the first token
(``begin_suppress_tokens``), and at a loop (:func:`loop_detected`). The few-shot prefix's KV
cache is computed once per language pair and shared by every batch (``prefix_cache``).
Offline default ``gemma-3-270m``.

Few-shot examples: built in for the languages of :data:`FEW_SHOT`; any other language (or other
sentences) through ``data.translator.few_shot``: a mapping ``{code: [sentence, ...]}`` in the
config, or a file holding one (``.yaml`` / ``.yml`` / ``.json``), or a JSON-lines file with one
parallel example per line (``{"en": "...", "fr": "..."}``). The i-th sentences of two languages are
translations of each other. :func:`check_few_shot` tells, without loading anything, whether a
language pair has examples.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from clo import languages
from clo.data.few_shot import FEW_SHOT
from clo.data.translators.base import LocalModelTranslator, MemoryModel, TranslationError, activation_bytes

if TYPE_CHECKING:
    from clo.data.config import TranslatorConfig

# Tokens of the few-shot prefix (three example pairs) kept per batch row; the estimate of the
# batch budget counts them.
_PREFIX_TOKENS = 160
_ROW_TOKENS = 16  # a row's fixed cost is spread over this many source tokens (see seq2seq)

FEW_SHOT_KEY = "data.translator.few_shot"


def _few_shot_error(where: str, line: int | None, reason: str) -> TranslationError:
    return TranslationError(f"{where}{f':{line}' if line else ''}: {reason}")


def _as_sets(tree, where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(tree, dict):
        raise _few_shot_error(where, None, f"expected a mapping {{language code: [sentences]}}, got "
                                           f"{type(tree).__name__}")
    out = {}
    for code, sents in tree.items():
        if isinstance(sents, str) or not isinstance(sents, (list, tuple)) or not sents \
                or not all(isinstance(x, str) and x.strip() for x in sents):
            raise _few_shot_error(where, None, f"field {code!r}: expected a non-empty list of sentences")
        if any("\n" in x for x in sents):
            raise _few_shot_error(where, None, f"field {code!r}: one line per sentence (the translator stops "
                                               "at a line break)")
        out[str(code)] = tuple(x.strip() for x in sents)
    return out


def load_few_shot(spec) -> dict[str, tuple[str, ...]]:
    """The user's few-shot sets (``data.translator.few_shot``): a mapping, or a YAML/JSON file of
    one, or JSON lines of parallel examples. ``{}`` for None. Errors name the file and line."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return _as_sets(spec, FEW_SHOT_KEY)
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        raise _few_shot_error(str(path), None, f"no such few-shot file ({FEW_SHOT_KEY})")
    if path.suffix in (".jsonl", ".ndjson"):
        sets: dict[str, list[str]] = {}
        keys = None
        for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                raise _few_shot_error(str(path), lineno, f"malformed JSON: {e.msg}") from None
            if not isinstance(row, dict) or not row:
                raise _few_shot_error(str(path), lineno, 'expected {"<code>": "<sentence>", ...}')
            if keys is not None and set(row) != keys:
                raise _few_shot_error(str(path), lineno, f"languages {sorted(row)}, but line 1 has "
                                                         f"{sorted(keys)}: every line is one parallel example")
            keys = set(row)
            for code, text in row.items():
                if not isinstance(text, str) or not text.strip() or "\n" in text:
                    raise _few_shot_error(str(path), lineno, f"field {code!r}: expected one non-empty line of text")
                sets.setdefault(str(code), []).append(text.strip())
        if not sets:
            raise _few_shot_error(str(path), None, "no examples")
        return {k: tuple(v) for k, v in sets.items()}
    if path.suffix in (".yaml", ".yml", ".json"):
        from clo.config_base import read_yaml  # JSON is YAML: one reader, errors with lines

        return _as_sets(read_yaml(path, "few-shot"), str(path))
    raise _few_shot_error(str(path), None, "unsupported few-shot file (use .yaml, .yml, .json or .jsonl)")


def few_shot_sets(spec=None) -> dict[str, tuple[str, ...]]:
    """The built-in sets with the user's over them."""
    return {**FEW_SHOT, **load_few_shot(spec)}


def check_few_shot(src_lang: str, tgt_lang: str, spec=None) -> dict[str, tuple[str, ...]]:
    """Raise (one line naming the key to set) unless both languages have few-shot examples of equal
    number; needs no model, so a build checks it before loading any. Returns the sets."""
    sets = few_shot_sets(spec)
    for code in (src_lang, tgt_lang):
        if code not in sets:
            raise TranslationError(
                f"the causal translator has no few-shot examples for {code!r}: give parallel sentences with "
                f"{FEW_SHOT_KEY}: FILE.yaml ({{{src_lang}: [...], {tgt_lang}: [...]}}) or FILE.jsonl "
                f"({{\"{src_lang}\": ..., \"{tgt_lang}\": ...}} per line); built in: {', '.join(sorted(FEW_SHOT))}")
    if len(sets[src_lang]) != len(sets[tgt_lang]):
        raise TranslationError(
            f"{FEW_SHOT_KEY}: {len(sets[src_lang])} {src_lang!r} sentences but {len(sets[tgt_lang])} "
            f"{tgt_lang!r} ones; the i-th sentences are translations of each other (give both languages)")
    return sets


def few_shot_prefix(src_lang: str, tgt_lang: str, shots: int = 3, few_shot=None) -> str:
    """The part of the causal prompt shared by every segment of a language pair (``few_shot``: the
    user's sets, :func:`load_few_shot`)."""
    sets = check_few_shot(src_lang, tgt_lang, few_shot)
    s, t = languages.get(src_lang).name, languages.get(tgt_lang).name
    lines = [f"Translate {s} to {t}.", ""]
    for a, b in list(zip(sets[src_lang], sets[tgt_lang]))[:shots]:
        lines += [f"{s}: {a}", f"{t}: {b}", ""]
    return "\n".join(lines) + "\n"


def few_shot_suffix(text: str, src_lang: str, tgt_lang: str) -> str:
    s, t = languages.get(src_lang).name, languages.get(tgt_lang).name
    return f"{s}: {text}\n{t}:"


def few_shot_prompt(text: str, src_lang: str, tgt_lang: str, shots: int = 3, few_shot=None) -> str:
    """The causal translator's prompt; the model continues it with the translation and a newline."""
    return few_shot_prefix(src_lang, tgt_lang, shots, few_shot) + few_shot_suffix(text, src_lang, tgt_lang)


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

        self.few_shot = load_few_shot(cfg.few_shot)  # before the tokenizer: a bad file fails at once
        self.tokenizer = load_tokenizer(cfg.model)
        self._stop_ids: list[int] | None = None
        self._prefixes: dict = {}

    @staticmethod
    def check_languages(cfg: TranslatorConfig, src_lang: str, tgt_lang: str) -> None:
        """What can be checked before any model loads: the language pair has few-shot examples."""
        check_few_shot(src_lang, tgt_lang, cfg.few_shot)

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
        fields = {**super().fingerprint_fields(), "dtype": dtype, "stop": "newline+nonempty+loop",
                  "prefix": "cached" if self.cfg.prefix_cache else "full"}
        if self.few_shot:  # the user's examples make other translations: their content, not their file
            blob = json.dumps(self.few_shot, sort_keys=True, ensure_ascii=False).encode("utf-8")
            fields["few_shot"] = hashlib.sha256(blob).hexdigest()[:16]
        return fields

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
            prefix = few_shot_prefix(src_lang, tgt_lang, few_shot=self.few_shot)
            ids = self.tokenizer(prefix, return_tensors="pt")["input_ids"].to(self.device)
            with torch.inference_mode():
                out = self._load()(input_ids=ids, use_cache=True)
                cache = out.cache if _cache_kw() == "cache" else out.past_key_values
            self._prefixes[key] = (ids, cache)
        return self._prefixes[key]

    def translate_batch(self, texts, src_lang, tgt_lang):
        import torch
        from transformers import StoppingCriteriaList

        check_few_shot(src_lang, tgt_lang, self.few_shot)  # before the model loads
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
            enc = self.tokenizer([few_shot_prompt(t, src_lang, tgt_lang, few_shot=self.few_shot) for t in texts],
                                 return_tensors="pt",
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
