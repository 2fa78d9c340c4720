"""``identity``: returns the text (dry runs; every record then fails the language check)."""

from __future__ import annotations

from clo.data.translators.base import Translator, fingerprint_string


class IdentityTranslator(Translator):
    kind = "identity"
    echo_is_failure = False

    def fingerprint(self) -> str:
        return fingerprint_string("identity", {})

    def translate_batch(self, texts, src_lang, tgt_lang):
        return list(texts)
