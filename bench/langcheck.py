"""The translation checks measured on human-written text: how many correct human translations
they reject (false rejects), and how many wrong-language and mismatched pairs they catch.

Data (the shared data directory, ``CLO_SHARED_DATA`` or ../shared/data):

- BELEBELE (``belebele/eng_Latn.jsonl``, ``deu_Latn.jsonl``): the FLORES passages, questions and
  answer options in English and German, written by professional translators, paired by
  ``(link, question_number)``. Correct pairs: (English, German) of each passage (unique by
  link), each question and each answer option (many are one or two words: "Bankette").
- The Language Confusion Benchmark's monolingual prompts (``language_confusion/monolingual``):
  prompts written in each of 14 languages (ar de es fr hi id it ja ko pt ru tr vi zh) by native
  speakers or translators. As the target side of a correct pair they test the language check
  alone (there is no English source: the prompt stands in for its own source, so the length and
  repetition checks pass by construction).

Wrong pairs, which the checks must reject:

- wrong language: every language's prompts checked as each other language's (sampled, up to
  ``--per-lang`` per pair of languages), English prompts checked as each language's (a
  translation left in English), and the English BELEBELE passages and questions as German;
- mismatched: each English BELEBELE passage (question) paired with the German translation of
  the next passage (question): right language, wrong content. Only an adequacy check (``--encoder``,
  cross-lingual similarity) can see these; without one the figure says what the language,
  length and repetition checks alone catch.

    python bench/langcheck.py                                   # prints the table
    python bench/langcheck.py --out bench/results/langcheck.md --json bench/results/langcheck.json
    python bench/langcheck.py --encoder sentence-transformers/LaBSE --adequacy-min 0.5

A rate is ``rejected / n`` with its Wilson 95 % interval.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

LCB_LANGS = ("ar", "de", "es", "fr", "hi", "id", "it", "ja", "ko", "pt", "ru", "tr", "vi", "zh")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def belebele_pairs(data_dir: Path, limit: int | None = None) -> dict[str, list[tuple[str, str]]]:
    """``{"passage": [(en, de), ...], "question": [...], "answer": [...]}``, in file order
    (passages unique by link; ``limit``: the first ``limit`` rows of the files)."""
    en = _jsonl(data_dir / "belebele" / "eng_Latn.jsonl")[:limit]
    de = {(r["link"], r["question_number"]): r for r in _jsonl(data_dir / "belebele" / "deu_Latn.jsonl")}
    out: dict[str, list[tuple[str, str]]] = {"passage": [], "question": [], "answer": []}
    seen = set()
    for r in en:
        g = de.get((r["link"], r["question_number"]))
        if g is None:
            continue
        if r["link"] not in seen:
            seen.add(r["link"])
            out["passage"].append((r["flores_passage"], g["flores_passage"]))
        out["question"].append((r["question"], g["question"]))
        for k in range(1, 5):
            out["answer"].append((r[f"mc_answer{k}"], g[f"mc_answer{k}"]))
    return out


def lcb_prompts(data_dir: Path, limit: int | None = None) -> dict[str, list[str]]:
    """The monolingual Language Confusion Benchmark prompts by language (every source file;
    ``limit``: at most that many per language, in sorted file order)."""
    out: dict[str, list[str]] = defaultdict(list)
    for f in sorted((data_dir / "language_confusion" / "monolingual").glob("*/*.csv")):
        with f.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                lang = row["language"]
                if limit is None or len(out[lang]) < limit:
                    out[lang].append(row["prompt"])
    return dict(out)


class Counter2:
    """Rejections per (group, language): ``k`` of ``n``, and the reasons."""

    def __init__(self):
        self.k: dict[tuple[str, str], int] = defaultdict(int)
        self.n: dict[tuple[str, str], int] = defaultdict(int)
        self.reasons: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.examples: dict[tuple[str, str], list] = defaultdict(list)

    def add(self, group: str, lang: str, reasons: list[str], example=None) -> None:
        key = (group, lang)
        self.n[key] += 1
        if reasons:
            self.k[key] += 1
            for r in reasons:
                self.reasons[key][r.rsplit("_", 2)[0] if r.endswith(("_x_tgt", "_y_tgt")) else r] += 1
            if example is not None and len(self.examples[key]) < 5:
                self.examples[key].append(example)

    def rows(self) -> list[dict]:
        out = []
        for key in sorted(self.n):
            k, n = self.k[key], self.n[key]
            lo, hi = wilson(k, n)
            out.append({"group": key[0], "lang": key[1], "rejected": k, "n": n, "rate": k / n,
                        "ci95": [round(lo, 4), round(hi, 4)], "reasons": dict(self.reasons[key]),
                        "examples": self.examples[key]})
        return out


def _reasons(src: str, tgt: str, lang: str, cfg, similarity: float | None = None) -> list[str]:
    from clo.data.checks import check_pair

    return check_pair("y_tgt", src, tgt, lang, cfg, similarity=similarity)[1]


def run(data_dir: Path, cfg=None, *, limit: int | None = None, per_lang: int = 100, seed: int = 0,
        encoder: str | None = None) -> dict:
    """Every rate of the module docstring: ``{"correct": rows, "wrong_language": rows,
    "mismatched": rows, "seconds"}``. ``cfg``: a ``ChecksConfig`` (default: clo's defaults);
    ``limit``: the first ``limit`` BELEBELE rows and LCB prompts per language (a quick slice)."""
    from clo.data.checks import adequacy_scores
    from clo.data.config import ChecksConfig

    cfg = cfg or ChecksConfig()
    if encoder is not None:
        cfg = cfg.model_copy(update={"adequacy_model": encoder})
    t0 = time.perf_counter()
    rng = random.Random(seed)
    bb = belebele_pairs(data_dir, limit)
    lcb = lcb_prompts(data_dir, limit)
    correct, wrong, mism = Counter2(), Counter2(), Counter2()
    # A text without a source (a native prompt standing in for its own): the language check alone.
    alone = cfg.model_copy(update={"length_ratio_min_chars": 10**9, "numbers": False})

    def sims(pairs):
        if not cfg.adequacy_model:
            return [None] * len(pairs)
        return adequacy_scores([a for a, _ in pairs], [b for _, b in pairs], cfg.adequacy_model)

    # Correct human translations: BELEBELE English -> German.
    for kind, pairs in bb.items():
        for (en, de), s in zip(pairs, sims(pairs)):
            correct.add(f"belebele-{kind}", "de", _reasons(en, de, "de", cfg, s), [en[:80], de[:80]])
    # Native prompts as their own language's target side (the language check alone).
    for lang in LCB_LANGS:
        for text in lcb.get(lang, []):
            correct.add("lcb-native", lang, _reasons(text, text, lang, alone), text[:80])
    # Wrong language: other languages' prompts, English prompts, English BELEBELE text as German.
    for lang in LCB_LANGS:
        for other in (*LCB_LANGS, "en"):
            if other == lang or other not in lcb:
                continue
            texts = lcb[other]
            sample = rng.sample(texts, min(len(texts), per_lang if other == "en" else max(1, per_lang // 13)))
            for text in sample:
                group = "lcb-english" if other == "en" else "lcb-other-language"
                wrong.add(group, lang, _reasons(text, text, lang, alone), [other, text[:80]])
    for kind in ("passage", "question"):
        for en, _ in bb[kind]:
            wrong.add(f"belebele-{kind}-english", "de", _reasons(en, en, "de", cfg), en[:80])
    # Mismatched: a passage (question) with the next one's German translation.
    for kind in ("passage", "question"):
        pairs = bb[kind]
        shifted = [(pairs[i][0], pairs[(i + 1) % len(pairs)][1]) for i in range(len(pairs))]
        for (en, de), s in zip(shifted, sims(shifted)):
            mism.add(f"belebele-{kind}-mismatched", "de", _reasons(en, de, "de", cfg, s), [en[:80], de[:80]])
    return {"correct": correct.rows(), "wrong_language": wrong.rows(), "mismatched": mism.rows(),
            "seconds": round(time.perf_counter() - t0, 1),
            "config": cfg.model_dump(mode="json")}


def _pooled(rows: list[dict]) -> tuple[int, int]:
    return sum(r["rejected"] for r in rows), sum(r["n"] for r in rows)


def markdown(res: dict) -> str:
    lines = []
    titles = {"correct": "Correct human translations: rejected (false rejects; goal <= 2 %)",
              "wrong_language": "Wrong-language texts: rejected (goal >= 95 %)",
              "mismatched": "Mismatched pairs (right language, another text's translation): rejected (goal >= 95 %)"}
    for part, title in titles.items():
        lines += [f"## {title}", "", "| set | language | rejected / n | rate | 95 % CI | reasons |", "|---|---|---|---|---|---|"]
        for r in res[part]:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items(), key=lambda kv: -kv[1]))
            lines.append(f"| {r['group']} | {r['lang']} | {r['rejected']} / {r['n']} | {100 * r['rate']:.1f} % | "
                         f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f} % | {reasons} |")
        k, n = _pooled(res[part])
        lines += [f"| **all** | | {k} / {n} | {100 * k / max(n, 1):.1f} % | | |", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="the shared data directory (default: CLO_SHARED_DATA or ../shared/data)")
    p.add_argument("--limit", type=int, help="the first N BELEBELE rows and LCB prompts per language")
    p.add_argument("--per-lang", type=int, default=100, help="wrong-language texts per target language")
    p.add_argument("--encoder", help="adequacy check: a sentence-transformers model (e.g. sentence-transformers/LaBSE)")
    p.add_argument("--adequacy-min", type=float, help="data.checks.adequacy_min")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a data.checks key, e.g. --set langid_min_letters=12")
    p.add_argument("--out", help="write the Markdown table here")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    from clo.config import load_config
    from clo.paths import shared_data_dir

    data_dir = Path(args.data_dir) if args.data_dir else shared_data_dir()
    ov = [f"data.checks.{o}" for o in args.overrides]
    if args.adequacy_min is not None:
        ov.append(f"data.checks.adequacy_min={args.adequacy_min}")
    cfg = load_config(None, ov).data.checks
    res = run(data_dir, cfg, limit=args.limit, per_lang=args.per_lang, encoder=args.encoder)
    md = markdown(res)
    print(md)
    print(f"({res['seconds']} s)")
    if args.out:
        Path(args.out).write_text(md, encoding="utf-8")
    if args.json:
        # The figures only: the examples are the shared data's text, which stays out of the repository.
        figures = {k: [{f: v for f, v in r.items() if f != "examples"} for r in rows] if isinstance(rows, list)
                   else rows for k, rows in res.items()}
        Path(args.json).write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
