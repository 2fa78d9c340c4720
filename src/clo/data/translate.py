"""Machine translation of texts: the public names of :mod:`clo.data.translators`, kept here.

The translators live one module per kind in :mod:`clo.data.translators` (registry, shared base,
entry points: see its docstring); this module re-exports them, so ``from clo.data.translate
import translate_texts`` and ``clo.data.translate.TRANSLATORS`` (the registry itself, not a
copy) keep working.
"""

from __future__ import annotations

from clo.data.translators import (
    DEFAULT_BATCH_TOKENS,
    PROMPT_VERSION,
    TRANSLATORS,
    CausalTranslator,
    IdentityTranslator,
    LocalModelTranslator,
    MemoryModel,
    OpenAITranslator,
    SegmentFailure,
    Seq2SeqTranslator,
    Translated,
    TranslationError,
    TranslationStats,
    Translator,
    budget_from_memory,
    cuda_memory,
    few_shot_prefix,
    few_shot_prompt,
    few_shot_suffix,
    fingerprint_string,
    loop_detected,
    make_translator,
    plan_batches,
    register_translator,
    resolve_device,
    retry_after_seconds,
    translate_all,
    translate_texts,
)
from clo.data.translators.causal import FEW_SHOT
from clo.data.translators.ct2 import compute_type, is_ct2_model_dir, load_ctranslate2
from clo.data.translators.openai import SYSTEM_PROMPT
from clo.data.translators.seq2seq import _lang_token

__all__ = [
    "DEFAULT_BATCH_TOKENS",
    "FEW_SHOT",
    "PROMPT_VERSION",
    "SYSTEM_PROMPT",
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
    "_lang_token",
    "budget_from_memory",
    "compute_type",
    "cuda_memory",
    "few_shot_prefix",
    "few_shot_prompt",
    "few_shot_suffix",
    "fingerprint_string",
    "is_ct2_model_dir",
    "load_ctranslate2",
    "loop_detected",
    "make_translator",
    "plan_batches",
    "register_translator",
    "resolve_device",
    "retry_after_seconds",
    "translate_all",
    "translate_texts",
]
