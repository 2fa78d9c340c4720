"""Language drift watched while training: greedy answers to a few held-out prompts per language.

At every validation step the model answers the first ``train.drift_prompts`` validation prompts
in the target language (``x_tgt``) and in English (``x_en``), greedily, ``drift_max_new_tokens``
tokens at most. Two shares per language are logged (``drift/<tgt|en>_lang_share``,
``drift/<tgt|en>_echo_share``):

- **language share**: answers that clo's language ID (:func:`clo.langid.detect_languages`) reads
  as the prompt's language, among the answers that do not echo the prompt. An echo is in the
  prompt's language by construction, so counting it would hide the drift it stands for.
- **echo share**: answers that repeat the prompt (:func:`echoes`).

SFT on English-centric models tends to drift into English on target-language prompts; CLO is
built not to. The report draws these curves per run (``clo report``).
"""

from __future__ import annotations

import difflib
import logging
import re

import torch

log = logging.getLogger(__name__)

ECHO_RATIO = 0.8


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def echoes(prompt: str, answer: str) -> bool:
    """Whether ``answer`` repeats ``prompt``: one contains the other (after case folding and
    whitespace collapsing), or their characters match for at least 80 % (difflib's ratio), which
    also catches an echo with a word changed or a phrase appended."""
    p, a = _norm(prompt), _norm(answer)
    if not a or not p:
        return False
    return a in p or p in a or difflib.SequenceMatcher(None, p, a, autojunk=False).ratio() >= ECHO_RATIO


def drift_shares(prompts: list[str], answers: list[str], lang: str, detect=None) -> dict:
    """``{"lang_share", "echo_share", "n"}`` of ``answers`` to ``prompts`` in language ``lang``."""
    if detect is None:
        from clo.langid import detect_languages as detect
    echo = [echoes(p, a) for p, a in zip(prompts, answers)]
    rest = [a for a, e in zip(answers, echo) if not e]
    langs = detect(rest) if rest else []
    return {"lang_share": sum(code == lang for code in langs) / len(rest) if rest else None,
            "echo_share": sum(echo) / len(answers) if answers else None, "n": len(answers)}


class DriftProbe:
    """The held-out prompts of a run and the generation that measures drift on them."""

    def __init__(self, val_path, tokenizer, lang: str, n: int, max_new_tokens: int):
        from clo.data.records import read_records

        records = [r for r in read_records(val_path) if r.tgt_lang == lang][:n]
        self.prompts = {"tgt": [r.x_tgt for r in records], "en": [r.x_en for r in records]}
        self.codes = {"tgt": lang, "en": "en"}
        self.tok, self.max_new_tokens = tokenizer, max_new_tokens

    def __bool__(self) -> bool:
        return bool(self.prompts["tgt"])

    @torch.no_grad()
    def measure(self, model) -> dict:
        """Greedy answers of ``model`` (a plain transformers model) and their shares, as log keys."""
        from clo.eval.generation import TransformersGenerator, collect

        was_training = model.training
        model.eval()
        gen = TransformersGenerator(model, self.tok)
        out = {}
        for side, prompts in self.prompts.items():
            answers = collect(gen, prompts, max_new_tokens=self.max_new_tokens, temperature=0.0,
                              batch_size=len(prompts))
            shares = drift_shares(prompts, answers, self.codes[side])
            for k in ("lang_share", "echo_share"):
                if shares[k] is not None:
                    out[f"drift/{side}_{k}"] = shares[k]
        model.train(was_training)
        return out
