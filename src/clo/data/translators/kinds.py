"""The registry of translator kinds (``data.translator.kind``): one module per kind, registered
here, so that the pipeline makes translators without importing the package that exports it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from clo.data.translators.base import Translator
from clo.data.translators.causal import CausalTranslator
from clo.data.translators.identity import IdentityTranslator
from clo.data.translators.openai import OpenAITranslator
from clo.data.translators.seq2seq import Seq2SeqTranslator
from clo.registry import Registry

if TYPE_CHECKING:
    from clo.data.config import TranslatorConfig

TRANSLATORS: Registry[Callable[[TranslatorConfig], Translator]] = Registry("translator kind", {
    "seq2seq": Seq2SeqTranslator,
    "causal": CausalTranslator,
    "openai": OpenAITranslator,
    "identity": IdentityTranslator,
})


def register_translator(kind: str, factory: Callable[[TranslatorConfig], Translator], *, replace: bool = False):
    """Add a translator kind (``data.translator.kind``); a taken kind is an error unless ``replace``."""
    TRANSLATORS.register(kind, factory, replace=replace)


def make_translator(cfg: TranslatorConfig) -> Translator:
    return TRANSLATORS.get(cfg.kind)(cfg)
