"""Language fidelity: does the model answer in the language it was asked in?

``fidelity``: the detected language (clo.langid) of every response; ``rate`` is the share in
the prompt's language, ``per_language`` the share of each detected language (``"none"`` for a
response with no letters). An answer that repeats the prompt (:func:`echoes`, the drift probe's
definition) is in the prompt's language without answering: ``echo_rate`` is their share, and
``rate_excluding_echoes`` the share in the language among the ``n_excluding_echoes`` others.
Prompts (:data:`SOURCES`): ``prompts`` or ``prompts_file`` when given; else ``source="auto"`` takes
the Language Confusion Benchmark's monolingual prompts where it has the language and otherwise the
held-out prompts of ``held_out_file`` (cross-lingual records, e.g. a grid's
``data/<lang>/validation.jsonl``: ``x_tgt``, or ``x_en`` for English), so that every language has a
source (the benchmark has no Swahili or Yoruba); ``"lcb"`` and ``"held-out"`` choose one.

``confusion``: the Language Confusion Benchmark (Marchisio et al., 2024) on its prompts, scored
with the benchmark's own rules (:mod:`clo.eval.lcb_metrics`, metric ``lcb``: fastText lid.176
with its 0.3 threshold and raw labels, its normalisation, line filter, jieba / fugashi
tokenisers, WPR languages and macro averages). ``lpr``, ``wpr``, ``lcpr`` and ``acc`` are the
benchmark's ``("all", lang)`` row of the task (split), i.e. the mean over its sources;
``per_source`` holds the ``(source, lang)`` rows. The same pipeline with clo's own language ID
(:func:`clo.langid.detect_languages`, with its kana and Chinese-variety rules) in place of
lid.176 is reported separately under ``clo_langid``. Monolingual and cross-lingual prompts are
two tasks of the benchmark and are never pooled: ``split="all"`` reports each under its name
(``metrics["monolingual"]``, ``metrics["crosslingual"]``) and has no headline of its own.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from clo.eval import lcb_metrics as lcb
from clo.eval.core import (
    EvalDataError,
    TaskContext,
    TaskResult,
    data_hash,
    eval_data_error,
    read_json_list,
)
from clo.eval.task import MAX_NEW_TOKENS, Option, Task, count_csv_rows, count_lines, register
from clo.io import read_text
from clo.registry import UnknownName, unknown_name_message


def echoes(prompt: str, answer: str) -> bool:
    """Whether ``answer`` repeats ``prompt``: :func:`clo.train.drift.echoes`, the definition the
    trainer's drift probe counts by."""
    from clo.train.drift import echoes as _echoes

    return _echoes(prompt, answer)


def _detect(texts: list[str]) -> list[str | None]:
    from clo.langid import detect_languages

    return detect_languages(texts)


# ---------------------------------------------------------------------------------------------
# Prompts

#: The Language Confusion Benchmark under the data directory: ``<split>/<source>/<lang>.csv`` and
#: the English word list ``words``.
LCB_DIR = "language_confusion"
#: Its two tasks (prompt splits), never pooled.
SPLITS = ("monolingual", "crosslingual")


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
    root = Path(data_dir) / LCB_DIR
    splits = SPLITS if split == "all" else (split,)
    if any(s not in SPLITS for s in splits):
        raise UnknownName(unknown_name_message("split", split, (*SPLITS, "all")), split)
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

    text = read_text(path, eval_data_error)  # not UTF-8: an error naming the file and line
    if path.suffix == ".txt":
        return [line for line in text.splitlines() if line.strip()]
    if path.suffix == ".json":
        data = read_json_list(path, "prompts")
        return [pick(x, f"{path}: item {i}") for i, x in enumerate(data)]
    if path.suffix == ".jsonl":
        from clo.data.records import iter_jsonl

        return [pick(obj, f"{path}:{lineno}") for lineno, obj in iter_jsonl(path)]
    if path.suffix == ".csv":
        rows = csv.DictReader(io.StringIO(text, newline=""))
        return [pick(row, f"{path}:{lineno}") for lineno, row in enumerate(rows, 2)]
    raise EvalDataError(f"{path}: unknown prompts format {path.suffix!r}; use .txt, .json, .jsonl or .csv")


def lcb_languages(data_dir: Path | None, split: str = "monolingual") -> set[str]:
    """The language codes with Language Confusion Benchmark prompts of ``split`` under ``data_dir``."""
    if data_dir is None:
        return set()
    return {f.stem for f in (Path(data_dir) / LCB_DIR / split).glob("*/*.csv")}


#: Where fidelity prompts come from when neither ``prompts`` nor ``prompts_file`` is given.
SOURCES = ("auto", "lcb", "held-out")


def _source(opts: dict) -> str:
    source = opts.get("source", "auto")
    if source not in SOURCES:
        raise UnknownName("fidelity: " + unknown_name_message("source", source, SOURCES), source)
    return source


def uses_held_out(lang: str, data_dir: Path | None, opts: dict) -> bool:
    """Whether a fidelity run with these options reads the held-out prompts (``held_out_file``):
    no ``prompts``/``prompts_file``, and ``source`` is ``held-out``, or ``auto`` for a language
    the benchmark has no monolingual prompts for."""
    if opts.get("prompts") is not None or opts.get("prompts_file"):
        return False
    source = _source(opts)
    return source == "held-out" or (source == "auto" and lang not in lcb_languages(data_dir))


def load_held_out(path: Path, lang: str) -> list[str]:
    """The prompts of held-out cross-lingual records: ``x_tgt`` of the records in ``lang``, or
    ``x_en`` when ``lang`` is English."""
    from clo.data.records import read_records

    records = read_records(path)
    if lang == "en":
        return [r.x_en for r in records]
    wrong = sorted({r.tgt_lang for r in records} - {lang})
    if wrong:
        raise EvalDataError(f"{path}: held-out records in {', '.join(wrong)}, not {lang!r}")
    return [r.x_tgt for r in records]


def missing_data(lang, data_dir: Path | None, opts: dict) -> str | None:
    """What a fidelity run in ``lang`` lacks (None: nothing), read before a grid starts."""
    if opts.get("prompts") is not None:
        return None
    if opts.get("prompts_file"):
        return None if Path(opts["prompts_file"]).is_file() else f"{opts['prompts_file']}: no such prompts file"
    if uses_held_out(lang.code, data_dir, opts):
        # A grid passes the validation split its data stage writes; the task checks it exists.
        return None if opts.get("held_out_file") else (
            f"no prompts for {lang.code}: the Language Confusion Benchmark has none under "
            f"{data_dir or '(no eval.data_dir)'}; give prompts_file= or held_out_file=")
    if lang.code not in lcb_languages(data_dir):  # source: lcb
        return (f"no prompts for {lang.code}: source lcb, and the Language Confusion Benchmark has none under "
                f"{data_dir or '(no eval.data_dir)'}; use source auto or held-out")
    return None


def missing_confusion_data(lang, data_dir: Path | None, opts: dict) -> str | None:
    """What a confusion run in ``lang`` lacks (None: nothing)."""
    if data_dir is None:
        return "the Language Confusion Benchmark is read from a local copy: set eval.data_dir"
    root = Path(data_dir) / LCB_DIR
    if not root.is_dir():
        return f"{root}: no such directory (a local copy of the Language Confusion Benchmark)"
    for s in _splits(opts):
        if lang.code not in lcb_languages(data_dir, s):
            has = ", ".join(sorted(lcb_languages(data_dir, s))) or "none"
            return f"{root / s}: no {s} prompts for {lang.code} (<source>/{lang.code}.csv; it has {has})"
    words = Path(opts["words_file"]) if opts.get("words_file") else Path(data_dir) / LCB_DIR / "words"
    return None if words.exists() else f"{words}: no English word list (the word-level pass rate needs it)"


# ---------------------------------------------------------------------------------------------
# Tasks


def _responses(ctx: TaskContext, prompts: list[str], ids: list[str], *, batch_size, max_new_tokens, desc) -> list[str]:
    ev = ctx.cfg.eval
    max_new_tokens = ev.max_new_tokens if max_new_tokens is None else max_new_tokens
    batch_size = ev.batch_size if batch_size is None else batch_size
    out = [ctx.cache.get(i) for i in ids]
    todo = [k for k, o in enumerate(out) if o is None]
    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=desc, unit="resp")
    if todo:
        for idx, texts in ctx.generator.iter_generate([prompts[k] for k in todo],
                                                      max_new_tokens=max_new_tokens,
                                                      temperature=ev.temperature, top_p=ev.top_p, seed=ev.seed,
                                                      batch_size=batch_size):
            for j, t in zip(idx, texts):
                out[todo[j]] = t
                ctx.cache.put(ids[todo[j]], t)
            bar.update(len(idx))
    bar.close()
    return out


def run_fidelity(ctx: TaskContext, *, prompts: list[str] | None = None, prompts_file: str | None = None,
                 source: str = "auto", held_out_file: str | None = None,
                 limit: int | None = None, batch_size: int | None = None,
                 max_new_tokens: int | None = None) -> TaskResult:
    limit = limit if limit is not None else ctx.cfg.eval.limit
    opts = {"prompts": prompts, "prompts_file": prompts_file, "source": source}
    origin = "given prompts" if prompts is not None else f"prompts file {prompts_file}"
    if prompts is None:
        if prompts_file:
            prompts = load_prompts(Path(prompts_file))
        elif uses_held_out(ctx.lang.code, ctx.data_dir, opts):
            if not held_out_file:
                raise EvalDataError(
                    f"fidelity: no prompts for {ctx.lang.code} (the Language Confusion Benchmark has none "
                    f"under {ctx.data_dir or 'eval.data_dir, which is unset'}); give prompts_file= (--prompts-file) "
                    "or held_out_file= (cross-lingual records such as a grid's data/<lang>/validation.jsonl)")
            prompts, origin = load_held_out(Path(held_out_file), ctx.lang.code), f"held-out records {held_out_file}"
        else:
            prompts = [r["prompt"] for r in load_lcb(ctx.data_dir, ctx.lang.code, "monolingual")]
            origin = "Language Confusion Benchmark, monolingual"
    prompts = list(prompts)[:limit]
    if not prompts:
        raise EvalDataError("fidelity: no prompts")
    ids = [str(i) for i in range(len(prompts))]
    responses = _responses(ctx, prompts, ids, batch_size=batch_size, max_new_tokens=max_new_tokens,
                           desc=f"fidelity {ctx.lang.code}")
    detected = _detect(responses)
    n = len(responses)
    counts = Counter(d or "none" for d in detected)
    echo = [echoes(p, r) for p, r in zip(prompts, responses)]
    rest = [d for d, e in zip(detected, echo) if not e]
    metrics = {
        "rate": sum(d == ctx.lang.code for d in detected) / n,
        "n": n,
        "per_language": {k: v / n for k, v in counts.most_common()},
        # An echo of a prompt in the language is "in the language" without answering anything.
        "echo_rate": sum(echo) / n,
        "rate_excluding_echoes": sum(d == ctx.lang.code for d in rest) / len(rest) if rest else None,
        "n_excluding_echoes": len(rest),
    }
    records = [{"id": i, "prompt": p, "response": r, "detected": d, "in_language": d == ctx.lang.code, "echo": e}
               for i, p, r, d, e in zip(ids, prompts, responses, detected, echo)]
    excl = metrics["rate_excluding_echoes"]
    md = (f"Prompts: {origin}.\n\nEchoes (answers that repeat the prompt): {metrics['echo_rate']:.3f}; "
          f"rate in {ctx.lang.code} among the {len(rest)} other answers: "
          f"{'—' if excl is None else f'{excl:.3f}'}.\n\n| detected language | share |\n|---|---|\n") + "\n".join(
        f"| {k} | {v:.3f} |" for k, v in metrics["per_language"].items())
    return TaskResult(metrics, records, data_hash(prompts), md)




def _split_metrics(recs: list[dict], lang: str, word_level: bool | None) -> dict:
    """The benchmark's rows for one task (split): per source, and the ("all", lang) average as
    the headline; the same for clo's own language ID under ``clo_langid``."""
    out: dict = {}
    for name, pick in (("lcb", lambda r: r), ("clo_langid", lambda r: r["clo_langid"])):
        groups = {}
        for key in sorted({(r["source"], r["language"]) for r in recs}):
            group = [pick(r) for r in recs if (r["source"], r["language"]) == key]
            groups[key] = lcb.rates(group, key[1], word_level)
        table = lcb.with_averages(groups)
        head = table[("all", lang)] if ("all", lang) in table else table[("all", "all")]
        m = {k: head[k] for k in ("lpr", "wpr", "lcpr", "acc")}
        m["per_source"] = {src: v for (src, _), v in groups.items()}
        if name == "lcb":
            out.update(m, n=len(recs), kept=sum(not r["skipped"] for r in recs))
        else:
            out["clo_langid"] = m
    return out


def run_confusion(ctx: TaskContext, *, split: str = "monolingual", limit: int | None = None,
                  words_file: str | None = None, word_level: bool | None = None, lid_model: str | None = None,
                  batch_size: int | None = None, max_new_tokens: int | None = None) -> TaskResult:
    limit = limit if limit is not None else ctx.cfg.eval.limit
    if split not in (*SPLITS, "all"):
        raise UnknownName(unknown_name_message("split", split, (*SPLITS, "all")), split)
    splits = SPLITS if split == "all" else (split,)
    code = ctx.lang.code
    rows = [{**r, "task": s} for s in splits for r in load_lcb(ctx.data_dir, code, s)[:limit]]
    wpath = Path(words_file) if words_file else (ctx.data_dir or Path(".")) / LCB_DIR / "words"
    try:
        words = lcb.load_english_words(wpath)
    except FileNotFoundError as e:
        raise EvalDataError(str(e)) from None
    lid = lcb.lid_detector(lid_model)
    responses = _responses(ctx, [r["prompt"] for r in rows], [r["id"] for r in rows], batch_size=batch_size,
                           max_new_tokens=max_new_tokens, desc=f"confusion {code} ({split})")
    records = []
    for r, resp in zip(rows, responses):
        v = lcb.verdict(resp, r["language"], lid, words)
        c = lcb.verdict(resp, r["language"], _detect, words)
        c["lines"] = [x["lang"] for x in c["lines"]]
        records.append({**r, "response": resp, **v, "clo_langid": c})
    per_split = {s: _split_metrics([r for r in records if r["task"] == s], code, word_level) for s in splits}
    lid_name = Path(lid_model).name if lid_model else lcb.lid_model_path().name
    metrics: dict = {"metric": "lcb", "split": split, "lid_model": lid_name}
    if code == "ja":
        metrics["ja_dictionary"] = Path(lcb.ja_dictionary()).parent.parent.name
    if split == "all":  # the two tasks are reported side by side, never pooled
        metrics.update(n=len(records), **per_split)
    else:
        metrics.update(per_split[split])

    def cell(x: float | None) -> str:
        return "—" if x is None else f"{x:.4f}"

    md = ["| task | source | LPR | WPR | LCPR | kept | LPR (clo LID) | WPR (clo LID) |", "|---|---|---|---|---|---|---|---|"]
    for s, m in per_split.items():
        c = m["clo_langid"]
        for src, p in m["per_source"].items():
            q = c["per_source"][src]
            md.append(f"| {s} | {src} | {cell(p['lpr'])} | {cell(p['wpr'])} | {cell(p['lcpr'])} | {p['kept']} | "
                      f"{cell(q['lpr'])} | {cell(q['wpr'])} |")
        md.append(f"| {s} | all | {cell(m['lpr'])} | {cell(m['wpr'])} | {cell(m['lcpr'])} | {m['kept']} | "
                  f"{cell(c['lpr'])} | {cell(c['wpr'])} |")
    return TaskResult(metrics, records, data_hash([r["prompt"] for r in rows]), "\n".join(md))


# ---------------------------------------------------------------------------------------------
# The tasks' declarations


def _splits(opts: dict) -> tuple[str, ...]:
    split = opts.get("split", "monolingual")
    return SPLITS if split == "all" else (split,)


def _lcb_files(lang, splits) -> list[str]:
    return [f"{LCB_DIR}/{s}/*/{lang.code}.csv" for s in splits]


def fidelity_files(lang, opts: dict) -> list[str]:
    """The benchmark's monolingual prompts of ``lang``, unless the prompts are given."""
    return [] if opts.get("prompts") or opts.get("prompts_file") else _lcb_files(lang, ("monolingual",))


def count_fidelity_items(lang, data_dir: Path | None, opts: dict, assumed) -> int | None:
    """Prompts: the given ones, those of the prompts file or held-out records, else the benchmark's
    monolingual prompts of ``lang`` (else 100 per source file, ``assumed["confusion"]``)."""
    if opts.get("prompts") is not None:
        return len(opts["prompts"])
    if opts.get("prompts_file"):
        try:
            return len(load_prompts(Path(opts["prompts_file"])))
        except (OSError, ValueError):  # EvalDataError is one: the data check says what is wrong
            return None
    if uses_held_out(lang.code, data_dir, opts) and opts.get("held_out_file"):
        return count_lines(Path(opts["held_out_file"]))
    n = count_csv_rows(sorted(data_dir.glob(_lcb_files(lang, ("monolingual",))[0]))) if data_dir else None
    return n or int(assumed.get("confusion", 0)) or None


def confusion_files(lang, opts: dict) -> list[str]:
    """The benchmark's prompts of ``lang`` in the chosen splits, and its English word list."""
    return _lcb_files(lang, _splits(opts)) + ([] if opts.get("words_file") else [f"{LCB_DIR}/words"])


def count_confusion_items(lang, data_dir: Path | None, opts: dict, assumed) -> int | None:
    """Prompts of ``lang`` in the chosen splits, else 100 per split (``assumed["confusion"]``)."""
    files = [f for pattern in _lcb_files(lang, _splits(opts)) for f in sorted(data_dir.glob(pattern))] if data_dir else []
    return count_csv_rows(files) or int(assumed.get("confusion", 0)) * len(_splits(opts)) or None


FIDELITY = register(Task(
    "fidelity", "share of responses in the prompt's language", run_fidelity,
    data_files=fidelity_files, missing_data=missing_data, count_items=count_fidelity_items,
    options=(Option("prompts_file", "prompts (.txt/.json/.jsonl/.csv; default: the Language Confusion "
                    "Benchmark's where it has the language)", metavar="FILE"),
             Option("source", "where the prompts come from when no --prompts-file is given: the benchmark "
                    "where it has the language, else --held-out-file (auto), or one of them",
                    choices=SOURCES, default="auto"),
             Option("held_out_file", "held-out cross-lingual records (JSONL) whose prompts in the language "
                    "are used, e.g. a grid's data/<lang>/validation.jsonl", metavar="FILE"),
             MAX_NEW_TOKENS),
    reads_held_out=lambda lang, data_dir, opts: uses_held_out(lang.code, data_dir, opts),
))
CONFUSION = register(Task(
    "confusion", "Language Confusion Benchmark line/word-level pass rates", run_confusion,
    data_files=confusion_files, missing_data=missing_confusion_data, count_items=count_confusion_items,
    options=(Option("split", "the benchmark's prompts: monolingual, crosslingual, or both reported side by side",
                    choices=(*SPLITS, "all"), default="monolingual"),
             MAX_NEW_TOKENS),
    variant="split",
))
