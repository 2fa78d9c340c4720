"""Machine translation of texts: segmented, deduplicated, batched by length, cached, resumable.

:func:`translate_texts` is the one entry point (:mod:`clo.data.translators.pipeline`).
Translators sit in one registry (:data:`TRANSLATORS`, extend it with :func:`register_translator`),
one module per kind, on the shared base of :mod:`clo.data.translators.base`:

- ``seq2seq`` (:mod:`~clo.data.translators.seq2seq`): M2M100 / NLLB-200 through transformers, the
  source language set on the tokenizer and the target language forced as the first generated
  token; with the ``ctranslate2`` package installed (``backend: auto``) the same model runs on
  CTranslate2 (:mod:`~clo.data.translators.ct2`: converted once and cached, or a directory made
  by ``ct2-transformers-converter``; float16 on a GPU, int8 on a CPU);
- ``causal`` (:mod:`~clo.data.translators.causal`): a causal LM prompted with a few-shot
  translation prompt, one line at a time, greedy, stopping at the first generated line break
  (offline default ``gemma-3-270m``);
- ``openai`` (:mod:`~clo.data.translators.openai`): an OpenAI-compatible chat endpoint, one
  request per segment, ``concurrency`` at a time; HTTP errors, timeouts and malformed, empty or
  null answers are retried with exponential backoff (honouring ``Retry-After``), then the
  segment fails;
- ``identity`` (:mod:`~clo.data.translators.identity`): returns the text (dry runs; every record
  then fails the language check).

No half-translated text: every segment's translation is checked as it comes back
(:func:`clo.data.checks.segment_failure`): empty, or returned unchanged while it has words to
translate, or failed at the endpoint, it is a :class:`SegmentFailure`. Failures are never cached, so a
rerun asks for exactly the failed segments. :func:`translate_all` reports them per text;
:func:`translate_texts` raises when there is any.

How a call runs: every text is cut into segments (:mod:`clo.data.segment`); identical segments
are translated once; the unique segments are sorted by token length and packed into batches of
at most :meth:`Translator.batch_tokens` padded source tokens (``data.translator.batch_tokens``;
when null, chosen for the device: a fixed 4,096 on a CPU, from the free memory, the model's
weights and its per-token cost on a GPU) and ``batch_size`` segments. The batch plan is a
function of the whole input only, and each batch is written to the SQLite cache in one
transaction, so a run killed at any moment and started again recomputes exactly the batches it
had not finished, with the same composition: its output is byte-identical to an uninterrupted
run's (given deterministic kernels, which CPU inference and CTranslate2 greedy decoding are).

The cache is keyed by :meth:`Translator.fingerprint` (what determines a translation: kind,
model, prompt version, decoding, precision; not the endpoint's address, key, timeouts, device
or batch sizes), the language pair and the segment.
"""

from __future__ import annotations

from clo.data.translators.base import (
    DEFAULT_BATCH_TOKENS,
    PROMPT_VERSION,
    LocalModelTranslator,
    MemoryModel,
    SegmentFailure,
    TranslationError,
    Translator,
    budget_from_memory,
    cuda_memory,
    fingerprint_string,
    resolve_device,
)
from clo.data.translators.causal import (
    CausalTranslator,
    few_shot_prefix,
    few_shot_prompt,
    few_shot_suffix,
    loop_detected,
)
from clo.data.translators.identity import IdentityTranslator
from clo.data.translators.kinds import TRANSLATORS, make_translator, register_translator
from clo.data.translators.openai import OpenAITranslator, retry_after_seconds
from clo.data.translators.pipeline import (
    Translated,
    TranslationStats,
    plan_batches,
    translate_all,
    translate_texts,
)
from clo.data.translators.seq2seq import Seq2SeqTranslator

__all__ = [
    "DEFAULT_BATCH_TOKENS",
    "PROMPT_VERSION",
    "TRANSLATORS",
    "CausalTranslator",
    "IdentityTranslator",
    "LocalModelTranslator",
    "MemoryModel",
    "OpenAITranslator",
    "SegmentFailure",
    "Seq2SeqTranslator",
    "Translated",
    "TranslationError",
    "TranslationStats",
    "Translator",
    "budget_from_memory",
    "cuda_memory",
    "few_shot_prefix",
    "few_shot_prompt",
    "few_shot_suffix",
    "fingerprint_string",
    "loop_detected",
    "make_translator",
    "plan_batches",
    "register_translator",
    "resolve_device",
    "retry_after_seconds",
    "translate_all",
    "translate_texts",
]
