"""Quality checks on a translated record: language, length ratio, degeneration.

Each check is a pure function; :func:`check_record` runs them all and returns what goes into the
record's ``meta["checks"]``: the measured values and the list of failure reasons. A record with
any reason goes to the rejects file, and the build summary counts every reason.

Reasons (stable strings, counted in ``summary.json``):

- ``empty_<field>``: a text is empty or whitespace (source or translation);
- ``lang_<field>``: the detected language of ``x_tgt`` / ``y_tgt`` is not the target language
  (one of its ``langid`` labels in :mod:`clo.languages`; undecidable text passes: code and numbers
  only, or fewer than ``langid_min_letters`` letters, "77.0°F", "Fog.", where language ID is a
  guess, and every text of a language no detector knows, ``langid: []``);
- ``length_ratio_<field>``: the length ratio leaves its bounds;
- ``repetition_<field>``: the translation repeats itself far more than its source does;
- ``segment_<kind>_<field>``: a segment of the text has no usable translation
  (:func:`segment_failure`; kinds ``empty``, ``echo``, ``error``), so the text is incomplete.

- ``echo_<field>`` (:func:`check_records` only: data translated elsewhere): the "translation" is
  the English text unchanged, though it has words to translate.

:func:`check_records` runs the checks on records translated elsewhere (``clo data check``).

The segment checks run in :mod:`clo.data.translators` on every segment as it comes back, before the
cache sees it: a failed segment is never cached, and a record with one is rejected unchecked.
"""

from __future__ import annotations

import re

from clo.data.config import ChecksConfig
from clo.data.segment import _split_code_blocks

# Characters of target text per character of English text, for a faithful translation (rough
# medians over parallel corpora); the length-ratio bounds are multiples of it. Latin, Cyrillic
# and most alphabetic scripts: about 1.
EXPECTED_CHAR_RATIO: dict[str, float] = {"zh": 0.3, "ja": 0.4, "ko": 0.45}

_INLINE_CODE = re.compile(r"`[^`\n]*`")
_WORD = re.compile(r"[^\W\d_]+")

# Why a segment has no usable translation: translated to nothing, returned unchanged, or the
# request for it failed (HTTP error, timeout, malformed body) after every retry.
SEGMENT_FAILURE_KINDS = ("empty", "echo", "error")


def has_words_to_translate(text: str) -> bool:
    """Must a translation of ``text`` differ from it?

    Names, titles and acronyms ("Albert Einstein", "NASA", "Paris.") may legitimately come back
    unchanged; ordinary words may not. A text has words to translate when it has two words or
    more and one of them is lowercase with two letters or more ("Hello world.", "Write a poem"),
    or when it has two letters or more of a script without case (Chinese, Arabic, Hindi, ...).
    """
    if sum(ch.isalpha() and not ch.islower() and not ch.isupper() for ch in text) >= 2:
        return True
    words = _WORD.findall(text)
    return len(words) >= 2 and any(len(w) >= 2 and w.islower() for w in words)


def _normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


def segment_failure(source: str, target: str, *, echo: bool = True) -> str | None:
    """``"empty"`` or ``"echo"`` when ``target`` is no translation of the segment ``source``, else None.

    ``echo=False`` accepts an unchanged segment (the identity translator echoes by definition).
    """
    if not target.strip():
        return "empty"
    if echo and _normalised(target) == _normalised(source) and has_words_to_translate(source):
        return "echo"
    return None


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code: what language ID should look at."""
    kept = "".join(chunk for chunk, is_code in _split_code_blocks(text) if not is_code)
    return _INLINE_CODE.sub(" ", kept)


def length_ratio(source: str, target: str) -> float:
    """r = len(target) / len(source), in characters of the stripped texts (source non-empty)."""
    return len(target.strip()) / max(1, len(source.strip()))


def repetition(text: str, n: int = 10) -> float:
    """Share of duplicate character n-grams: ``1 - |distinct n-grams| / |n-grams|``.

    Computed on the text with whitespace runs collapsed; 0 for a text shorter than ``n + 1``.
    A translation stuck in a loop ("the the the ..." or a sentence over and over) scores near 1;
    ordinary prose near 0.
    """
    t = " ".join(text.split())
    total = len(t) - n + 1
    if total <= 1:
        return 0.0
    grams = {t[i:i + n] for i in range(total)}
    return 1.0 - len(grams) / total


def _langid_labels(tgt_lang: str) -> tuple[str, ...]:
    """The detector labels that count as ``tgt_lang`` (clo.languages ``langid``: ``zh-Hant`` is
    detected as ``zh``, Egyptian Arabic as ``arz`` or ``ar``); an unregistered code is its own label."""
    from clo import languages

    try:
        return languages.get(tgt_lang).langid or ()
    except KeyError:
        return (tgt_lang,)


def check_pair(
    field: str, source: str, target: str, tgt_lang: str, cfg: ChecksConfig, detect=None
) -> tuple[dict, list[str]]:
    """Checks of one translated text (``field`` is ``x_tgt`` or ``y_tgt``)."""
    values: dict = {}
    reasons: list[str] = []
    if not target.strip():
        return {"lang": None}, [f"empty_{field}"]
    if cfg.langid:
        if detect is None:
            from clo.langid import detect_language as detect
        text = prose(target)
        letters = sum(ch.isalpha() for ch in text)
        labels = _langid_labels(tgt_lang)
        # A language no detector knows (labels empty) is undecidable: the check passes.
        lang = detect(text) if letters >= cfg.langid_min_letters and labels else None
        values["lang"] = lang
        if lang is not None and lang not in labels:
            reasons.append(f"lang_{field}")
    ratio = length_ratio(source, target)
    values["length_ratio"] = round(ratio, 4)
    if len(source.strip()) >= cfg.length_ratio_min_chars:
        expected = EXPECTED_CHAR_RATIO.get(tgt_lang, 1.0)
        if not cfg.length_ratio_min * expected <= ratio <= cfg.length_ratio_max * expected:
            reasons.append(f"length_ratio_{field}")
    rep_src, rep_tgt = repetition(source, cfg.repetition_ngram), repetition(target, cfg.repetition_ngram)
    values["repetition"] = round(rep_tgt, 4)
    if rep_tgt > cfg.repetition_max and rep_tgt > rep_src + cfg.repetition_margin:
        reasons.append(f"repetition_{field}")
    return values, reasons


def check_record(x_en: str, y_en: str, x_tgt: str, y_tgt: str, tgt_lang: str, cfg: ChecksConfig,
                 detect=None) -> dict:
    """``{"x_tgt": {...}, "y_tgt": {...}, "passed": bool, "reasons": [...]}`` for ``meta["checks"]``."""
    out: dict = {}
    reasons: list[str] = []
    for name, text in (("x_en", x_en), ("y_en", y_en)):
        if not text.strip():
            reasons.append(f"empty_{name}")
    for name, src, tgt in (("x_tgt", x_en, x_tgt), ("y_tgt", y_en, y_tgt)):
        values, rs = check_pair(name, src, tgt, tgt_lang, cfg, detect)
        out[name] = values
        reasons += rs
    out["passed"] = not reasons
    out["reasons"] = reasons
    return out


def check_records(records: list, cfg: ChecksConfig, detect=None) -> tuple[list, list[dict]]:
    """Check :class:`~clo.data.records.CrossLingualRecord` s translated elsewhere (``clo data check``).

    Every record gets ``meta["checks"]`` (:func:`check_record`, plus ``echo_<field>`` for a text
    left in English); returns (passing records, reject rows ``{"id", "reasons", "record"}``), in
    input order, as a build writes them.
    """
    accepted, rejects = [], []
    for r in records:
        checks = check_record(r.x_en, r.y_en, r.x_tgt, r.y_tgt, r.tgt_lang, cfg, detect)
        for name, src, tgt in (("x_tgt", r.x_en, r.x_tgt), ("y_tgt", r.y_en, r.y_tgt)):
            if tgt.strip() and segment_failure(src, tgt) == "echo":
                checks["reasons"].append(f"echo_{name}")
        checks["passed"] = not checks["reasons"]
        r.meta["checks"] = checks
        if checks["passed"]:
            accepted.append(r)
        else:
            rejects.append({"id": r.id, "reasons": checks["reasons"], "record": r.to_dict()})
    return accepted, rejects
