"""Language fidelity: does the model answer in the language it was asked in?

``fidelity``: the detected language (clo.langid) of every response; ``rate`` is the share in
the prompt's language, ``per_language`` the share of each detected language (``"none"`` for a
response with no letters).

``confusion``: the Language Confusion Benchmark (Marchisio et al., 2024) on its prompts,
following its ``compute_metrics.py``: a response is normalised (cut at ``"\\nQ:"``, ASCII
punctuation, ``—``, ``،`` and ``#`` removed), split into lines, lines of fewer than 5 tokens
dropped (whitespace tokens; jieba words for Chinese), and a response with no line left is
skipped. Line-level pass rate ``lpr`` = share of kept responses whose every line is detected as
the expected language; word-level pass rate ``wpr`` = share of line-passing responses with no
English word (from the benchmark's word list: lower-case words longer than 3 letters), computed
only for non-Latin-script languages as the benchmark does (it is unreliable for Latin script:
``wpr`` is then None and ``lcpr`` equals ``lpr``); ``lcpr`` is the harmonic mean of the two.
Figures are computed per source dataset and averaged over sources, as the benchmark averages.
"""

from __future__ import annotations

import csv
import string
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm.auto import tqdm

from clo.eval.core import EvalDataError, TaskContext, TaskResult, data_hash, read_json_list, register_task
from clo.eval.stats import harmonic_mean

# The benchmark computes word-level errors only for these languages.
WORD_LEVEL_LANGUAGES = frozenset({"ar", "hi", "ja", "ko", "ru", "zh"})
MIN_LINE_TOKENS = 5


def _detect(texts: list[str]) -> list[str | None]:
    from clo.langid import detect_languages

    return detect_languages(texts)


# ---------------------------------------------------------------------------------------------
# Prompts


def _lcb_rows(root: Path, split: str, lang: str) -> list[dict]:
    files = sorted((root / split).glob(f"*/{lang}.csv"))
    rows = []
    for f in files:
        with f.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            for lineno, row in enumerate(reader, 2):
                for field in ("prompt", "language"):
                    if not (row.get(field) or "").strip():
                        raise EvalDataError(f"{f}:{lineno}: field {field!r} missing or empty")
                rows.append({"id": f"{split}/{f.parent.name}/{lang}/{lineno}", "prompt": row["prompt"],
                             "source": row.get("source") or f.parent.name, "language": row["language"]})
    return rows


def load_lcb(data_dir: Path | None, lang: str, split: str = "monolingual") -> list[dict]:
    """Language Confusion Benchmark prompts for ``lang``: ``{id, prompt, source, language}``."""
    if data_dir is None:
        raise EvalDataError("the Language Confusion Benchmark is read from a local copy: set eval.data_dir "
                            "(a directory with language_confusion/{monolingual,crosslingual}/<source>/<lang>.csv)")
    root = Path(data_dir) / "language_confusion"
    splits = ("monolingual", "crosslingual") if split == "all" else (split,)
    if any(s not in ("monolingual", "crosslingual") for s in splits):
        raise ValueError(f"unknown split {split!r}; use monolingual, crosslingual or all")
    rows = [r for s in splits for r in _lcb_rows(root, s, lang)]
    if not rows:
        raise EvalDataError(f"{root}: no {split} prompts for language {lang!r} (<split>/<source>/{lang}.csv)")
    return rows


def load_prompts(path: Path) -> list[str]:
    """Prompts from .txt (one a line), .json (strings, or objects with prompt/instruction/x_tgt),
    .jsonl (objects with x_tgt, prompt or instruction; cross-lingual records give x_tgt) or .csv
    (a ``prompt`` column)."""
    if not path.is_file():
        raise EvalDataError(f"{path}: no such prompts file")
    keys = ("x_tgt", "prompt", "instruction")

    def pick(obj, where: str) -> str:
        if isinstance(obj, str):
            return obj
        if isinstance(obj, dict):
            for k in keys:
                if isinstance(obj.get(k), str) and obj[k].strip():
                    return obj[k]
        raise EvalDataError(f"{where}: expected a string or an object with one of the fields {', '.join(keys)}")

    if path.suffix == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".json":
        data = read_json_list(path, "prompts")
        return [pick(x, f"{path}: item {i}") for i, x in enumerate(data)]
    if path.suffix == ".jsonl":
        from clo.data.records import iter_jsonl

        return [pick(obj, f"{path}:{lineno}") for lineno, obj in iter_jsonl(path)]
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return [pick(row, f"{path}:{lineno}") for lineno, row in enumerate(csv.DictReader(fh), 2)]
    raise EvalDataError(f"{path}: unknown prompts format {path.suffix!r}; use .txt, .json, .jsonl or .csv")


# ---------------------------------------------------------------------------------------------
# Language Confusion Benchmark metrics (pure given the detector)


def lcb_normalize(text: str) -> str:
    text = text.split("\nQ:")[0].strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return text.replace("—", " ").replace("،", "").replace("#", "")


def lcb_tokenize(line: str, lang: str) -> list[str]:
    if lang == "zh":
        try:
            import jieba
        except ImportError:
            raise RuntimeError("word segmentation of Chinese needs jieba: pip install jieba") from None
        return [t for t in jieba.lcut(line) if t.strip()]
    return line.split()


def load_english_words(path: Path) -> frozenset[str]:
    """The benchmark's English word list, as it filters it: lower-case words longer than 3."""
    if not path.is_file():
        raise EvalDataError(f"{path}: no English word list (language_confusion/words)")
    words = (w.strip() for w in path.read_text(encoding="utf-8").splitlines())
    return frozenset(w for w in words if w.islower() and len(w) > 3)


def response_verdict(response: str, lang: str, detect: Callable[[list[str]], list[str | None]],
                     english_words: frozenset[str] | None) -> dict:
    """``{"skipped", "line_error", "word_error", "lines"}`` of one response (see module doc)."""
    lines = lcb_normalize(response).split("\n")
    kept = [(line, toks) for line in lines if len(toks := lcb_tokenize(line, lang)) >= MIN_LINE_TOKENS]
    if not kept:
        return {"skipped": True, "line_error": False, "word_error": False, "lines": []}
    detected = detect([line for line, _ in kept])
    line_error = any(d != lang for d in detected)
    word_error = False
    if not line_error and english_words is not None:
        word_error = any(t.strip() in english_words for _, toks in kept for t in toks)
    return {"skipped": False, "line_error": line_error, "word_error": word_error,
            "lines": [{"text": line, "lang": d} for (line, _), d in zip(kept, detected)]}


def pass_rates(verdicts: Iterable[dict], word_level: bool) -> dict:
    """``lpr`` and ``wpr`` of one group of responses (the benchmark's ``compute_metrics``):

    .. math::

        \\mathrm{LPR} = 1 - \\frac{\\#\\text{line errors}}{\\max(1, \\#\\text{kept})}, \\qquad
        \\mathrm{WPR} = 1 - \\frac{\\#\\text{word errors}}{\\max(1, \\#\\text{kept} - \\#\\text{line errors})}
    """
    vs = [v for v in verdicts if not v["skipped"]]
    line_err = sum(v["line_error"] for v in vs)
    word_err = sum(v["word_error"] for v in vs)
    out = {"lpr": 1 - line_err / max(1, len(vs)), "wpr": None, "kept": len(vs)}
    if word_level:
        out["wpr"] = 1 - word_err / max(1, len(vs) - line_err)
    return out


# ---------------------------------------------------------------------------------------------
# Tasks


def _responses(ctx: TaskContext, prompts: list[str], ids: list[str], *, batch_size, max_new_tokens, desc) -> list[str]:
    ev = ctx.cfg.eval
    out = [ctx.cache.get(i) for i in ids]
    todo = [k for k, o in enumerate(out) if o is None]
    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=desc, unit="resp")
    if todo:
        for idx, texts in ctx.generator.iter_generate([prompts[k] for k in todo],
                                                      max_new_tokens=max_new_tokens or ev.max_new_tokens,
                                                      temperature=ev.temperature, top_p=ev.top_p, seed=ev.seed,
                                                      batch_size=batch_size or ev.batch_size):
            for j, t in zip(idx, texts):
                out[todo[j]] = t
                ctx.cache.put(ids[todo[j]], t)
            bar.update(len(idx))
    bar.close()
    return out


@register_task("fidelity", description="share of responses in the prompt's language")
def run_fidelity(ctx: TaskContext, *, prompts: list[str] | None = None, prompts_file: str | None = None,
                 limit: int | None = None, batch_size: int | None = None,
                 max_new_tokens: int | None = None) -> TaskResult:
    limit = limit if limit is not None else ctx.cfg.eval.limit
    if prompts is None:
        if prompts_file:
            prompts = load_prompts(Path(prompts_file))
        else:
            prompts = [r["prompt"] for r in load_lcb(ctx.data_dir, ctx.lang.code, "monolingual")]
    prompts = list(prompts)[:limit]
    if not prompts:
        raise EvalDataError("fidelity: no prompts")
    ids = [str(i) for i in range(len(prompts))]
    responses = _responses(ctx, prompts, ids, batch_size=batch_size, max_new_tokens=max_new_tokens,
                           desc=f"fidelity {ctx.lang.code}")
    detected = _detect(responses)
    n = len(responses)
    counts = Counter(d or "none" for d in detected)
    metrics = {
        "rate": sum(d == ctx.lang.code for d in detected) / n,
        "n": n,
        "per_language": {k: v / n for k, v in counts.most_common()},
    }
    records = [{"id": i, "prompt": p, "response": r, "detected": d, "in_language": d == ctx.lang.code}
               for i, p, r, d in zip(ids, prompts, responses, detected)]
    md = "| detected language | share |\n|---|---|\n" + "\n".join(
        f"| {k} | {v:.3f} |" for k, v in metrics["per_language"].items())
    return TaskResult(metrics, records, data_hash(prompts), md)


@register_task("confusion", description="Language Confusion Benchmark line/word-level pass rates")
def run_confusion(ctx: TaskContext, *, split: str = "monolingual", limit: int | None = None,
                  words_file: str | None = None, word_level: bool | None = None, batch_size: int | None = None,
                  max_new_tokens: int | None = None) -> TaskResult:
    limit = limit if limit is not None else ctx.cfg.eval.limit
    rows = load_lcb(ctx.data_dir, ctx.lang.code, split)[:limit]
    word_level = ctx.lang.code in WORD_LEVEL_LANGUAGES if word_level is None else word_level
    words = None
    if word_level:
        wpath = Path(words_file) if words_file else (ctx.data_dir or Path(".")) / "language_confusion" / "words"
        words = load_english_words(wpath)
    responses = _responses(ctx, [r["prompt"] for r in rows], [r["id"] for r in rows], batch_size=batch_size,
                           max_new_tokens=max_new_tokens, desc=f"confusion {ctx.lang.code} ({split})")
    records = []
    for r, resp in zip(rows, responses):
        v = response_verdict(resp, r["language"], _detect, words)
        records.append({**r, "response": resp, **v})
    per_source = {}
    for src in sorted({r["source"] for r in records}):
        per_source[src] = pass_rates([x for x in records if x["source"] == src], word_level)
    lpr = sum(p["lpr"] for p in per_source.values()) / len(per_source)
    wpr = sum(p["wpr"] for p in per_source.values()) / len(per_source) if word_level else None
    metrics = {"lpr": lpr, "wpr": wpr, "lcpr": harmonic_mean(lpr, wpr) if word_level else lpr,
               "n": len(records), "per_source": per_source}
    def cell(x: float | None) -> str:
        return "—" if x is None else f"{x:.4f}"

    md = "| source | LPR | WPR | kept |\n|---|---|---|---|\n" + "\n".join(
        f"| {s} | {cell(p['lpr'])} | {cell(p['wpr'])} | {p['kept']} |" for s, p in per_source.items())
    return TaskResult(metrics, records, data_hash([r["prompt"] for r in rows]), md)
