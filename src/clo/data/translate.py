"""Machine translation of texts: segmented, deduplicated, batched by length, cached, resumable.

:func:`translate_texts` is the one entry point. Translators sit in one registry
(:data:`TRANSLATORS`, extend it with :func:`register_translator`):

- ``seq2seq``: M2M100 / NLLB-200 through transformers, the source language set on the tokenizer
  and the target language forced as the first generated token (``forced_bos_token_id``); with the
  ``ctranslate2`` package installed (``backend: auto``) the same model runs on CTranslate2,
  converted once from the transformers weights and cached;
- ``causal``: a causal LM prompted with a few-shot translation prompt, one line at a time,
  greedy, stopping at the first generated line break (offline default ``gemma-3-270m``);
- ``openai``: an OpenAI-compatible chat endpoint, one request per segment, ``concurrency`` at a
  time; HTTP errors, timeouts and malformed, empty or null answers are retried with exponential
  backoff (honouring ``Retry-After``), then the segment fails (:class:`OpenAITranslator`);
- ``identity``: returns the text (dry runs; every record then fails the language check).

No half-translated text: every segment's translation is checked as it comes back
(:func:`clo.data.checks.segment_failure`): empty, or returned unchanged while it has words to
translate, or failed at the endpoint, it is a :class:`SegmentFailure`. Failures are never cached
(and cached entries that fail the check, left by older versions, are translated again), so a
rerun asks for exactly the failed segments. :func:`translate_all` reports them per text;
:func:`translate_texts` raises when there is any.

How a call runs: every text is cut into segments (:mod:`clo.data.segment`); identical segments
are translated once; the unique segments are sorted by token length and packed into batches of
at most ``batch_tokens`` padded source tokens (and ``batch_size`` segments). The batch plan is a
function of the whole input only, and each batch is written to the SQLite cache in one
transaction, so a run killed at any moment and started again recomputes exactly the batches it
had not finished, with the same composition: its output is byte-identical to an uninterrupted
run's (given deterministic kernels, which CPU inference and CTranslate2 greedy decoding are).
"""

from __future__ import annotations

import copy
import email.utils
import functools
import hashlib
import json
import logging
import math
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from clo import languages
from clo.data.cache import TranslationCache
from clo.data.checks import segment_failure
from clo.data.config import TranslatorConfig
from clo.data.segment import Piece, reassemble, segment_text, segments_of

log = logging.getLogger(__name__)

# Bump when a translator's prompt or decoding changes: the cache must not serve old outputs.
PROMPT_VERSION = 1


class TranslationError(RuntimeError):
    pass


@dataclass(frozen=True)
class SegmentFailure:
    """A segment without a usable translation; never cached, and its record is rejected.

    ``kind``: ``empty`` (nothing came back), ``echo`` (the source came back), ``error`` (the
    request failed: HTTP status, timeout, malformed body); ``detail`` says what exactly.
    """

    kind: str
    detail: str


def _device(spec: str) -> str:
    if spec != "auto":
        return spec
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Translator(ABC):
    """Translates batches of single segments. Subclasses set :attr:`kind`."""

    kind: str = ""
    # An unchanged segment is a failed translation, except for a translator that echoes by design.
    echo_is_failure: bool = True

    def __init__(self, cfg: TranslatorConfig):
        self.cfg = cfg

    def fingerprint(self) -> str:
        """Everything that changes the output: the cache key's translator part."""
        c = self.cfg
        # Not the segmentation limit: a segment's translation does not depend on it.
        return (f"{self.kind}/v{PROMPT_VERSION}|model={c.model}|greedy|new={c.max_new_tokens_ratio}x+"
                f"{c.max_new_tokens_extra}")

    def count_tokens(self, text: str) -> int:
        """Source tokens of a segment (segmentation limit and batch budget)."""
        from clo.data.segment import _approx_tokens

        return _approx_tokens(text)

    def max_new_tokens(self, n_source_tokens: int) -> int:
        return math.ceil(self.cfg.max_new_tokens_ratio * n_source_tokens) + self.cfg.max_new_tokens_extra

    @abstractmethod
    def translate_batch(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str | SegmentFailure]:
        """One translation per text, in order (a :class:`SegmentFailure` where there is none)."""

    def request_counts(self) -> dict[str, int]:
        """Running totals of an endpoint translator: ``requests``, ``retries``, usage tokens."""
        return {}

    def close(self) -> None:
        """Free the model (GPU memory)."""


# ---------------------------------------------------------------------------------------------
# identity


class IdentityTranslator(Translator):
    kind = "identity"
    echo_is_failure = False

    def fingerprint(self) -> str:
        return f"identity/v{PROMPT_VERSION}"

    def translate_batch(self, texts, src_lang, tgt_lang):
        return list(texts)


# ---------------------------------------------------------------------------------------------
# seq2seq: M2M100 / NLLB-200


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


class Seq2SeqTranslator(Translator):
    kind = "seq2seq"

    def __init__(self, cfg: TranslatorConfig):
        super().__init__(cfg)
        from transformers import AutoTokenizer

        from clo.models import resolve

        self.path = resolve(cfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.device = _device(cfg.device)
        self.backend = self._choose_backend(cfg.backend)
        self._model = None

    @staticmethod
    def _choose_backend(backend: str) -> str:
        if backend != "auto":
            return backend
        try:
            import ctranslate2  # noqa: F401
        except ImportError:
            return "transformers"
        return "ctranslate2"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _set_src(self, src_lang: str) -> None:
        tok = _lang_token(self.tokenizer, src_lang)
        # M2M100Tokenizer takes the bare code ("de"), NLLB the FLORES code (the token itself).
        self.tokenizer.src_lang = tok.strip("_") if tok.startswith("__") else tok

    def _hf_model(self):
        if self._model is None:
            from transformers import AutoModelForSeq2SeqLM

            from clo.models import resolve_dtype

            dtype = resolve_dtype(self.cfg.dtype, self.device)
            self._model = AutoModelForSeq2SeqLM.from_pretrained(self.path, dtype=dtype).to(self.device).eval()
        return self._model

    def _ct2_model(self):
        if self._model is None:
            self._model = load_ctranslate2(self.path, self.device, self.cfg.dtype)
        return self._model

    def translate_batch(self, texts, src_lang, tgt_lang):
        if self.backend == "ctranslate2":
            self._set_src(src_lang)
            return self._translate_ct2(texts, _lang_token(self.tokenizer, tgt_lang))
        return self._translate_hf(texts, src_lang, tgt_lang)

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

    def close(self):
        self._model = None


def load_ctranslate2(model_path: str, device: str, dtype: str = "auto"):
    """A CTranslate2 translator for a transformers M2M100/NLLB checkpoint, converted once.

    The converted model is cached under ``$CLO_CACHE/ct2/<hash of the checkpoint path and its
    config>``; conversion writes to a temporary directory that is renamed when complete.
    """
    import shutil

    import ctranslate2

    from clo.models import cache_root

    src = Path(model_path)
    ident = model_path
    if (src / "config.json").is_file():
        ident += (src / "config.json").read_text(encoding="utf-8")
    target = cache_root() / "ct2" / hashlib.sha256(ident.encode()).hexdigest()[:16]
    if not (target / "model.bin").is_file():
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("converting %s to CTranslate2 (once) in %s", model_path, target)
        ctranslate2.converters.TransformersConverter(model_path).convert(str(tmp), force=True)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    compute = {"auto": "default", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[dtype]
    return ctranslate2.Translator(str(target), device="cuda" if device.startswith("cuda") else "cpu",
                                  compute_type=compute)


# ---------------------------------------------------------------------------------------------
# causal: few-shot prompting of a (base) LM

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
                "clo.data.translate.FEW_SHOT (known: " + ", ".join(sorted(FEW_SHOT)) + ")"
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


class CausalTranslator(Translator):
    kind = "causal"

    def __init__(self, cfg: TranslatorConfig):
        super().__init__(cfg)
        from clo.models import load_tokenizer

        self.tokenizer = load_tokenizer(cfg.model)
        self.device = _device(cfg.device)
        self._model = None
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

    def fingerprint(self) -> str:
        return super().fingerprint() + "|nonempty|loopstop" + ("|prefix-cache" if self.cfg.prefix_cache else "")

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
        self._model = None
        self._prefixes = {}


# ---------------------------------------------------------------------------------------------
# openai-compatible endpoints

SYSTEM_PROMPT = (
    "You are a professional translator. Translate the user's text from {src} to {tgt}. Keep the "
    "meaning, tone and formatting. Reply with the translation only: no notes, no quotes, no preamble."
)

# Statuses worth another try, as the official client has them: request timeout, lock conflict,
# rate limit, server errors. Other 4xx concern the one request (too long, filtered): it fails.
_RETRY_STATUS = frozenset({408, 409, 429})
# Statuses that say the configuration is wrong: every request would fail the same way.
_FATAL_STATUS = frozenset({401, 403, 404})


class _FailedAttempt(Exception):
    """One request that gave no translation: the failure kind, whether to try again, and the
    delay the server asked for (Retry-After)."""

    def __init__(self, kind: str, detail: str, *, retry: bool = True, retry_after: float | None = None):
        super().__init__(detail)
        self.kind, self.detail, self.retry, self.retry_after = kind, detail, retry, retry_after


def retry_after_seconds(headers) -> float | None:
    """The server's ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            pass
        if name == "retry-after":
            try:
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError, IndexError):
                return None
    return None


def _brief(body: str, n: int = 60) -> str:
    """The start of a response body, for a message that should fit on one line."""
    text = " ".join(str(body).split())
    return repr(text[:n] + ("..." if len(text) > n else ""))


class OpenAITranslator(Translator):
    """One chat request per segment, ``concurrency`` in flight, each retried on its own.

    The retry loop is ours, not the official client's (it runs with ``max_retries=0``): the
    client retries HTTP errors but returns malformed, HTML, empty and null answers as if they
    were translations, and it does not say how many requests it sent. Here every failed attempt
    (HTTP 408/409/429/5xx, timeout, connection error, a body that is not a chat completion, null
    or empty content, the segment echoed) waits ``INITIAL_BACKOFF * 2**k`` seconds (at most
    ``MAX_BACKOFF``, with jitter), or what the server's Retry-After says, and tries again,
    ``max_retries`` times; then the segment fails (:class:`SegmentFailure`) and the build goes on
    without its record. Another 4xx concerns the one request (too long, filtered): no retry.
    401/403/404 stop the run: the endpoint, model or key is wrong for every segment alike; so do
    ``GIVE_UP_AFTER`` segments in a row failing with errors (an endpoint that is down would
    otherwise take hours of backoff to fail every segment of a large build).
    """

    kind = "openai"
    INITIAL_BACKOFF = 0.5  # seconds; the official client's defaults
    MAX_BACKOFF = 8.0
    MAX_RETRY_AFTER = 120.0  # a server asking for longer is waited on this long, then retried
    GIVE_UP_AFTER = 32

    def __init__(self, cfg: TranslatorConfig):
        super().__init__(cfg)
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise TranslationError(
                f"the openai translator reads its API key from ${cfg.api_key_env}, which is not set"
            )
        from openai import OpenAI

        self.endpoint = cfg.base_url or "https://api.openai.com/v1"
        self.client = OpenAI(base_url=cfg.base_url, api_key=key, max_retries=0, timeout=cfg.timeout)
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._fatal: TranslationError | None = None  # set by a 401/403/404: send nothing more
        self._errors_in_a_row = 0

    def fingerprint(self) -> str:
        return f"openai/v{PROMPT_VERSION}|model={self.cfg.model}|base={self.cfg.base_url or 'api.openai.com'}|t=0"

    def request_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _count(self, **amounts: int) -> None:
        with self._lock:
            self._counts.update(amounts)

    def _delay(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.MAX_RETRY_AFTER)
        return min(self.INITIAL_BACKOFF * 2.0 ** retry, self.MAX_BACKOFF) * (1 - 0.25 * random.random())

    def _one(self, text: str, src: str, tgt: str) -> str | SegmentFailure:
        attempts = 1 + self.cfg.max_retries
        for k in range(attempts):
            if self._fatal is not None:
                raise self._fatal
            self._count(requests=1, retries=int(k > 0))
            try:
                answer = self._request(text, src, tgt)
            except _FailedAttempt as e:
                failed = e
                if not e.retry or k + 1 == attempts:
                    break
                time.sleep(self._delay(k, e.retry_after))
            else:
                self._errors_in_a_row = 0
                return answer
        n = k + 1
        self._note_failure(failed)
        log.warning("%s: no translation of a %d-character segment after %d request%s: %s", self.endpoint,
                    len(text), n, "s" * (n > 1), failed.detail)
        return SegmentFailure(failed.kind, f"{self.endpoint}: {failed.detail} (after {n} request{'s' * (n > 1)})")

    def _note_failure(self, failed: _FailedAttempt) -> None:
        with self._lock:
            self._errors_in_a_row = self._errors_in_a_row + 1 if failed.kind == "error" else 0
            if self._errors_in_a_row >= self.GIVE_UP_AFTER and self._fatal is None:
                self._fatal = TranslationError(
                    f"{self.endpoint}: the last {self._errors_in_a_row} segments all failed (last: {failed.detail}); "
                    "stopping. The translations so far are cached: run again when the endpoint works"
                )

    def _request(self, text: str, src: str, tgt: str) -> str:
        import openai

        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.cfg.model, temperature=0,
                messages=[{"role": "system", "content": SYSTEM_PROMPT.format(src=src, tgt=tgt)},
                          {"role": "user", "content": text}],
            )
        except openai.APITimeoutError:
            raise _FailedAttempt("error", f"no answer within {self.cfg.timeout:g} s") from None
        except openai.APIConnectionError as e:
            raise _FailedAttempt("error", f"connection failed ({e.__cause__ or e})") from None
        except openai.APIStatusError as e:
            raise self._status_failure(e) from None
        answer = self._content(raw.text, raw.headers)
        # A server that misbehaves now and then may echo one request and translate the next.
        if segment_failure(text, answer, echo=self.echo_is_failure) == "echo":
            raise _FailedAttempt("echo", "the segment came back unchanged", retry_after=retry_after_seconds(raw.headers))
        return answer

    def _status_failure(self, e) -> _FailedAttempt:
        status = e.status_code
        body = _brief(getattr(e.response, "text", ""))
        if status in _FATAL_STATUS:
            self._fatal = TranslationError(
                f"{self.endpoint}: HTTP {status} for model {self.cfg.model!r} ({body}); check "
                f"data.translator.base_url, data.translator.model and the key in ${self.cfg.api_key_env}"
            )
            raise self._fatal
        retry = status in _RETRY_STATUS or status >= 500
        return _FailedAttempt("error", f"HTTP {status} {body}", retry=retry,
                              retry_after=retry_after_seconds(e.response.headers))

    def _content(self, body: str, headers) -> str:
        """The translation in a chat completion body; anything else is a failed attempt."""
        wait = retry_after_seconds(headers)
        try:
            obj = json.loads(body)
        except ValueError as e:
            ctype = headers.get("content-type", "no content type") if headers is not None else "?"
            raise _FailedAttempt("error", f"malformed response ({ctype}, {e}): {_brief(body)}",
                                 retry_after=wait) from None
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if isinstance(usage, dict):
            self._count(**{k: usage[k] for k in _USAGE_KEYS if isinstance(usage.get(k), int)})
        try:
            content = obj["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _FailedAttempt("error", f"response without choices[0].message.content: {_brief(body)}",
                                 retry_after=wait) from None
        if content is None:
            raise _FailedAttempt("empty", "null content", retry_after=wait)
        if not isinstance(content, str):
            raise _FailedAttempt("error", f"content is a {type(content).__name__}, not text", retry_after=wait)
        if not content.strip():
            raise _FailedAttempt("empty", f"empty content {content!r}", retry_after=wait)
        return content.strip()

    def translate_batch(self, texts, src_lang, tgt_lang):
        src, tgt = languages.get(src_lang).name, languages.get(tgt_lang).name
        self._fatal, self._errors_in_a_row = None, 0
        pool = ThreadPoolExecutor(max_workers=self.cfg.concurrency)
        try:
            return list(pool.map(lambda t: self._one(t, src, tgt), texts))
        finally:
            # After a fatal answer (401/403/404) the requests still queued are not sent.
            pool.shutdown(wait=True, cancel_futures=True)


_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


# ---------------------------------------------------------------------------------------------
# registry and the entry point

TRANSLATORS: dict[str, Callable[[TranslatorConfig], Translator]] = {
    "seq2seq": Seq2SeqTranslator,
    "causal": CausalTranslator,
    "openai": OpenAITranslator,
    "identity": IdentityTranslator,
}


def register_translator(kind: str, factory: Callable[[TranslatorConfig], Translator], *, replace: bool = False):
    if kind in TRANSLATORS and not replace:
        raise ValueError(f"translator {kind!r} is already registered (pass replace=True)")
    TRANSLATORS[kind] = factory


def make_translator(cfg: TranslatorConfig) -> Translator:
    try:
        factory = TRANSLATORS[cfg.kind]
    except KeyError:
        raise ValueError(f"unknown translator kind {cfg.kind!r}; known: {', '.join(sorted(TRANSLATORS))}") from None
    return factory(cfg)


@dataclass
class TranslationStats:
    texts: int = 0
    segments: int = 0  # translatable segments, with repeats
    unique_segments: int = 0
    cache_hits: int = 0  # unique segments found in the cache
    cache_rejected: int = 0  # cached entries that fail the segment check (older versions): redone
    translated: int = 0  # unique segments translated in this call
    failed: int = 0  # unique segments without a usable translation in this call
    failures: dict = field(default_factory=dict)  # kind -> failed unique segments
    batches_run: int = 0
    requests: int = 0  # endpoint translators: HTTP requests sent, retries included
    retries: int = 0
    usage: dict = field(default_factory=dict)  # endpoint translators: prompt/completion/total tokens
    seconds: float = 0.0
    translate_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def segments_per_second(self) -> float:
        return self.translated / self.translate_seconds if self.translate_seconds else 0.0

    def add_requests(self, before: dict[str, int], after: dict[str, int]) -> None:
        """Add what an endpoint translator counted between two :meth:`Translator.request_counts`."""
        delta = {k: v - before.get(k, 0) for k, v in after.items()}
        self.requests += delta.pop("requests", 0)
        self.retries += delta.pop("retries", 0)
        for k, v in delta.items():
            self.usage[k] = self.usage.get(k, 0) + v

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d["failures"] = dict(sorted(self.failures.items()))
        d["usage"] = dict(sorted(self.usage.items()))
        d["segments_per_second"] = round(self.segments_per_second, 3)
        d["seconds"] = round(self.seconds, 3)
        d["translate_seconds"] = round(self.translate_seconds, 3)
        return d


@dataclass
class Translated:
    """One text's translation: ``text`` is None when any of its segments failed (``failures``:
    segment -> why); a text is never returned half translated."""

    text: str | None
    failures: dict[str, SegmentFailure] = field(default_factory=dict)


def plan_batches(lengths: dict[str, int], batch_tokens: int, batch_size: int) -> list[list[str]]:
    """Pack segments, sorted by (token length, text), into batches.

    A batch holds at most ``batch_size`` segments and ``n * max_len <= batch_tokens`` padded
    source tokens (a single segment longer than the budget is a batch of its own). The plan is a
    pure function of its input: the same segments always give the same batches.
    """
    order = sorted(lengths, key=lambda s: (lengths[s], s))
    batches: list[list[str]] = []
    cur: list[str] = []
    for s in order:
        n = len(cur) + 1
        if cur and (n > batch_size or n * lengths[s] > batch_tokens):
            batches.append(cur)
            cur = []
        cur.append(s)
    if cur:
        batches.append(cur)
    return batches


def _checked(tr: Translator, batch: list[str], outs: list) -> tuple[dict[str, str], dict[str, SegmentFailure]]:
    """Split a batch's outputs into usable translations and failures, segment by segment."""
    if len(outs) != len(batch):
        raise TranslationError(f"{tr.kind} returned {len(outs)} translations for {len(batch)} segments")
    good: dict[str, str] = {}
    bad: dict[str, SegmentFailure] = {}
    for seg, out in zip(batch, outs):
        if isinstance(out, SegmentFailure):
            bad[seg] = out
            continue
        if out is not None and not isinstance(out, str):
            raise TranslationError(f"{tr.kind} returned a {type(out).__name__} for a segment, not text")
        kind = segment_failure(seg, out or "", echo=tr.echo_is_failure)
        if kind is None:
            good[seg] = out
        else:
            what = "an empty translation" if kind == "empty" else "the segment unchanged"
            bad[seg] = SegmentFailure(kind, f"{tr.kind} returned {what}")
    return good, bad


def _usable_cached(tr: Translator, cached: dict[str, str]) -> dict[str, str]:
    # Older versions cached empty and echoed answers as successes: those are translated again.
    return {s: t for s, t in cached.items() if segment_failure(s, t, echo=tr.echo_is_failure) is None}


def translate_all(
    texts: list[str],
    src_lang: str,
    tgt_lang: str,
    translator: TranslatorConfig | Translator,
    cache_path: str | Path,
    *,
    progress: bool = True,
    stats: TranslationStats | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[Translated]:
    """Translate ``texts`` from ``src_lang`` to ``tgt_lang`` (ISO 639-1), one :class:`Translated`
    per input: the text, or None and the failed segments.

    Segments, deduplicates, batches by length and caches (see the module docstring). Pass a
    :class:`Translator` instead of its config to reuse a loaded model across calls; from a
    config the model is loaded only when some segment is not cached yet. ``stats`` (optional)
    is filled in; ``on_batch(done, total)`` is called after each translated batch.
    """
    t0 = time.perf_counter()
    for code in (src_lang, tgt_lang):
        languages.get(code)  # an unknown code fails here, naming the known ones
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise TypeError("translate_texts expects a list of str")
    st = stats if stats is not None else TranslationStats()
    own = not isinstance(translator, Translator)
    tr = make_translator(translator) if own else translator
    cfg = tr.cfg
    fp = tr.fingerprint()
    length_cache: dict[str, int] = {}

    def count(s: str) -> int:
        if s not in length_cache:
            length_cache[s] = tr.count_tokens(s)
        return length_cache[s]

    pieces: list[list[Piece]] = [segment_text(t, cfg.max_segment_tokens, count) for t in texts]
    all_segments = [s for p in pieces for s in segments_of(p)]
    unique = list(dict.fromkeys(all_segments))
    st.texts += len(texts)
    st.segments += len(all_segments)
    st.unique_segments += len(unique)
    failed: dict[str, SegmentFailure] = {}
    counts_before = tr.request_counts()
    with TranslationCache(cache_path) as cache:
        cached = cache.get_many(fp, src_lang, tgt_lang, unique)
        done = _usable_cached(tr, cached)
        st.cache_hits += len(done)
        st.cache_rejected += len(cached) - len(done)
        if len(cached) > len(done):
            log.warning("%d cached translations are empty or unchanged segments: translating them again",
                        len(cached) - len(done))
        plan = plan_batches({s: count(s) for s in unique}, cfg.batch_tokens, cfg.batch_size)
        todo = [[s for s in b if s not in done] for b in plan]
        todo = [b for b in todo if b]
        bar = None
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(unique), initial=len(done), unit="seg", desc=f"translate {src_lang}->{tgt_lang}",
                       dynamic_ncols=True)
        try:
            for i, batch in enumerate(todo):
                t1 = time.perf_counter()
                good, bad = _checked(tr, batch, tr.translate_batch(batch, src_lang, tgt_lang))
                cache.put_many(fp, src_lang, tgt_lang, good)
                done.update(good)
                failed.update(bad)
                st.translate_seconds += time.perf_counter() - t1
                st.translated += len(good)
                st.failed += len(bad)
                for f in bad.values():
                    st.failures[f.kind] = st.failures.get(f.kind, 0) + 1
                st.batches_run += 1
                if bar is not None:
                    bar.update(len(batch))
                    bar.set_postfix(hits=st.cache_hits, failed=st.failed, seg_s=f"{st.segments_per_second:.2f}")
                if on_batch is not None:
                    on_batch(i + 1, len(todo))
        finally:
            if bar is not None:
                bar.close()
            st.add_requests(counts_before, tr.request_counts())
            if own:
                tr.close()
    st.seconds += time.perf_counter() - t0
    return [_assemble(p, done, failed) for p in pieces]


def _assemble(pieces: list[Piece], done: dict[str, str], failed: dict[str, SegmentFailure]) -> Translated:
    bad = {s: failed[s] for s in segments_of(pieces) if s in failed}
    return Translated(None, bad) if bad else Translated(reassemble(pieces, done))


def translate_texts(
    texts: list[str],
    src_lang: str,
    tgt_lang: str,
    translator: TranslatorConfig | Translator,
    cache_path: str | Path,
    *,
    progress: bool = True,
    stats: TranslationStats | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[str]:
    """:func:`translate_all` for callers that need every text: one translated text per input.

    Raises :class:`TranslationError` when a segment has no usable translation, after the whole
    input has been tried; the translations that succeeded are cached, so running again asks
    only for the failed segments.
    """
    results = translate_all(texts, src_lang, tgt_lang, translator, cache_path, progress=progress, stats=stats,
                            on_batch=on_batch)
    failures = {s: f for r in results for s, f in r.failures.items()}
    if failures:
        seg, first = next(iter(failures.items()))
        kinds = Counter(f.kind for f in failures.values())
        raise TranslationError(
            f"{len(failures)} segment(s) have no usable translation ({dict(sorted(kinds.items()))}); first: "
            f"{_brief(seg, 40)}: {first.kind}, {first.detail}. The others are cached: run again to retry these."
        )
    return [r.text for r in results]
