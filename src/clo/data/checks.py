"""Quality checks on a translated record: language, length ratio, degeneration.

Each check is a pure function; :func:`check_record` runs them all and returns what goes into the
record's ``meta["checks"]``: the measured values and the list of failure reasons. A record with
any reason goes to the rejects file, and the build summary counts every reason.

Reasons (stable strings, counted in ``summary.json``):

- ``empty_<field>``: a text is empty or whitespace (source or translation);
- ``lang_<field>``: the language detector gives the target language (its ``langid`` labels in
  :mod:`clo.languages`) less than ``langid_min_prob`` probability. Undecidable text passes, language
  ID abstains instead of guessing: code and numbers only, fewer than ``langid_min_letters``
  letters, or, in a script written with spaces, fewer than ``langid_min_words`` words ("77.0°F",
  "Mieux dormir.", "Lehrmaterial": one or two words are names, cognates or loanwords as often as
  not), and every text of a language no detector knows (``langid: []``). The thresholds are
  measured on human translations (``bench/langcheck.py``, docs/data.md): a probability floor
  rather than "the top label must be the target" keeps close languages (Indonesian read as Malay,
  Portuguese as Spanish) from rejecting correct text while a wrong language still scores ~0;
- ``length_ratio_<field>``: the length ratio leaves its bounds;
- ``repetition_<field>``: the translation repeats itself far more than its source does;
- ``numbers_<field>``: more than ``numbers_max_missing`` of the numbers in the English text are
  missing from the translation (digits of any script; ``1,000`` and ``1.000`` are the same runs
  of digits): a translation of another text, or one that lost its content;
- ``adequacy_<field>`` (with ``adequacy_model``): the cosine similarity of source and translation
  under a multilingual sentence encoder is below ``adequacy_min`` (:func:`adequacy_scores`);
- ``segment_<kind>_<field>``: a segment of the text has no usable translation
  (:func:`segment_failure`; kinds ``empty``, ``echo``, ``error``), so the text is incomplete.

- ``echo_<field>`` (:func:`check_records` only: data translated elsewhere): the "translation" is
  the English text unchanged, though it has words to translate.

:func:`check_records` runs the checks on records translated elsewhere (``clo data check``).

The segment checks run in :mod:`clo.data.translators` on every segment as it comes back, before the
cache sees it: a failed segment is never cached, and a record with one is rejected unchecked.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from typing import TYPE_CHECKING

from clo.data.segment import split_code_blocks

if TYPE_CHECKING:
    from clo.data.config import ChecksConfig

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
    kept = "".join(chunk for chunk, is_code in split_code_blocks(text) if not is_code)
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


# Scripts written without spaces between words: the word count says nothing there.
_UNSPACED = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x0E00, 0x0EFF),
             (0x1000, 0x109F), (0x1780, 0x17FF), (0x0F00, 0x0FFF))


def _unspaced(text: str) -> bool:
    letters = [ch for ch in text if ch.isalpha()]
    n = sum(any(lo <= ord(ch) <= hi for lo, hi in _UNSPACED) for ch in letters)
    return bool(letters) and n * 2 >= len(letters)


def decidable(text: str, cfg: ChecksConfig) -> bool:
    """Is ``text`` long enough for language ID to decide (else it abstains)?"""
    if sum(ch.isalpha() for ch in text) < cfg.langid_min_letters:
        return False
    return _unspaced(text) or len(_WORD.findall(text)) >= cfg.langid_min_words


_DIGITS = re.compile(r"\d+")


def numbers(text: str) -> Counter:
    """The runs of digits of ``text`` (any script's digits read as 0-9), counted."""
    ascii_digits = "".join(str(unicodedata.digit(ch)) if ch.isdigit() and unicodedata.digit(ch, None) is not None
                           else ch for ch in text)
    return Counter(_DIGITS.findall(ascii_digits))


def missing_numbers(source: str, target: str) -> float | None:
    """Share of the source's numbers (with multiplicity) not in the target; None when it has none."""
    src = numbers(source)
    if not src:
        return None
    return sum((src - numbers(target)).values()) / sum(src.values())


@functools.cache
def _encoder(name: str):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ValueError("data.checks.adequacy_model needs sentence-transformers: pip install 'clo[adequacy]'") from None
    from clo.models import resolve

    try:
        return SentenceTransformer(resolve(name), device="cpu")
    except Exception as e:  # noqa: BLE001 - not found, offline, not an encoder: the config's value
        raise ValueError(f"data.checks.adequacy_model: cannot load {name!r}: {type(e).__name__}: {e}") from None


def adequacy_scores(sources: list[str], targets: list[str], model: str, batch_size: int = 32) -> list[float]:
    """Cosine similarity of each source with its translation under the sentence encoder ``model``
    (sentence-transformers: a hub name or a directory; a plain transformers encoder gets mean pooling)."""
    if not sources:
        return []
    enc = _encoder(model)
    a = enc.encode(list(sources), batch_size=batch_size, normalize_embeddings=True, convert_to_tensor=True)
    b = enc.encode(list(targets), batch_size=batch_size, normalize_embeddings=True, convert_to_tensor=True)
    return [round(float(x), 4) for x in (a * b).sum(-1).tolist()]


def record_similarities(records: list[tuple[str, str, str, str]], cfg: ChecksConfig) -> list[dict | None]:
    """Per record ``(x_en, y_en, x_tgt, y_tgt)``: ``{"x_tgt": sim, "y_tgt": sim}`` under
    ``cfg.adequacy_model``, or None for every record when no model is set."""
    if not cfg.adequacy_model:
        return [None] * len(records)
    xs = adequacy_scores([r[0] for r in records], [r[2] or "" for r in records], cfg.adequacy_model)
    ys = adequacy_scores([r[1] for r in records], [r[3] or "" for r in records], cfg.adequacy_model)
    return [{"x_tgt": x, "y_tgt": y} for x, y in zip(xs, ys)]


def _langid_labels(tgt_lang: str) -> tuple[str, ...]:
    """The detector labels that count as ``tgt_lang`` (clo.languages ``langid``: ``zh-Hant`` is
    detected as ``zh``, Egyptian Arabic as ``arz`` or ``ar``); an unregistered code is its own label."""
    from clo import languages

    try:
        return languages.get(tgt_lang).langid or ()
    except KeyError:
        return (tgt_lang,)


def check_pair(
    field: str, source: str, target: str, tgt_lang: str, cfg: ChecksConfig, detect=None,
    similarity: float | None = None,
) -> tuple[dict, list[str]]:
    """Checks of one translated text (``field`` is ``x_tgt`` or ``y_tgt``). ``detect``: a
    function text -> code standing in for the detector (then the probability is 1 or 0);
    ``similarity``: the adequacy score, when an encoder is configured."""
    values: dict = {}
    reasons: list[str] = []
    if not target.strip():
        return {"lang": None}, [f"empty_{field}"]
    if cfg.langid:
        text = prose(target)
        labels = _langid_labels(tgt_lang)
        # A language no detector knows (labels empty) is undecidable: the check passes.
        probs: dict = {}
        if labels and decidable(text, cfg):
            if detect is not None:
                code = detect(text)
                probs = {code: 1.0} if code is not None else {}
            else:
                from clo.langid import language_probabilities

                probs = language_probabilities(text)
        lang = max(probs, key=probs.get) if probs else None
        values["lang"] = lang
        if lang is not None:
            p = sum(v for k, v in probs.items() if k in labels)
            values["lang_prob"] = round(p, 4)
            if p < cfg.langid_min_prob:
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
    if cfg.numbers:
        missing = missing_numbers(source, target)
        if missing is not None:
            values["numbers_missing"] = round(missing, 4)
            if missing > cfg.numbers_max_missing:
                reasons.append(f"numbers_{field}")
    if similarity is not None:
        values["similarity"] = similarity
        if similarity < cfg.adequacy_min:
            reasons.append(f"adequacy_{field}")
    return values, reasons


def check_record(x_en: str, y_en: str, x_tgt: str, y_tgt: str, tgt_lang: str, cfg: ChecksConfig,
                 detect=None, similarity: dict | None = None) -> dict:
    """``{"x_tgt": {...}, "y_tgt": {...}, "passed": bool, "reasons": [...]}`` for ``meta["checks"]``
    (``similarity``: ``{"x_tgt": score, "y_tgt": score}`` from :func:`record_similarities`)."""
    out: dict = {}
    reasons: list[str] = []
    for name, text in (("x_en", x_en), ("y_en", y_en)):
        if not text.strip():
            reasons.append(f"empty_{name}")
    for name, src, tgt in (("x_tgt", x_en, x_tgt), ("y_tgt", y_en, y_tgt)):
        values, rs = check_pair(name, src, tgt, tgt_lang, cfg, detect, (similarity or {}).get(name))
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
    sims = record_similarities([(r.x_en, r.y_en, r.x_tgt, r.y_tgt) for r in records], cfg)
    for r, sim in zip(records, sims):
        checks = check_record(r.x_en, r.y_en, r.x_tgt, r.y_tgt, r.tgt_lang, cfg, detect, sim)
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
