"""BELEBELE: zero-shot multiple choice scored by log-likelihood (docs/eval.md).

Two templates (:data:`TEMPLATES`): ``native`` (the paper's Table 7 labels of the evaluated
language, from :mod:`clo.languages`) and ``harness`` (lm-evaluation-harness's English template,
the same for every language). The prompt is scored as raw text, without the chat template, as the
harness does; ``chat=True`` wraps it in the model's chat template instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from clo.eval.core import EvalDataError, TaskContext, TaskResult, data_hash, eval_data_error
from clo.eval.stats import mean_stderr
from clo.eval.task import Option, Task, count_lines, register
from clo.io import read_text
from clo.languages import Language
from clo.registry import Registry

FIELDS = ("flores_passage", "question", "mc_answer1", "mc_answer2", "mc_answer3", "mc_answer4",
          "correct_answer_num")


def _harness(row: dict, lang: Language) -> tuple[str, list[str]]:
    ctx = (f"P: {row['flores_passage']}\nQ: {row['question'].strip()}\nA: {row['mc_answer1']}\n"
           f"B: {row['mc_answer2']}\nC: {row['mc_answer3']}\nD: {row['mc_answer4']}\nAnswer:")
    return ctx, [" A", " B", " C", " D"]


def _native(row: dict, lang: Language) -> tuple[str, list[str]]:
    lb = lang.belebele
    lines = [f"{lb.passage}: {row['flores_passage']}", f"{lb.question}: {row['question'].strip()}"]
    for label, k in zip(lb.options, range(1, 5)):
        # Labels that carry their own delimiter (Korean "가)") take no colon.
        sep = " " if label.endswith(")") else ": "
        lines.append(f"{label}{sep}{row[f'mc_answer{k}']}")
    lines.append(f"{lb.answer}:")
    return "\n".join(lines), [f" {label}" for label in lb.options]


TEMPLATES: Registry[Callable[[dict, Language], tuple[str, list[str]]]] = Registry("BELEBELE template", {
    "native": _native,
    "harness": _harness,
})


def render(row: dict, lang: Language, template: str = "native") -> tuple[str, list[str]]:
    """(context, the four continuations) of a BELEBELE row."""
    return TEMPLATES.get(template)(row, lang)


def data_file(lang: Language) -> str:
    """The BELEBELE file of ``lang`` under the data directory (the hub dataset's config names)."""
    return f"belebele/{lang.flores}.jsonl"


def load_rows(lang: Language, data_dir: Path | None, limit: int | None = None) -> list[dict]:
    """Rows of ``<data_dir>/belebele/<flores>.jsonl``, or of the hub's ``facebook/belebele``."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if data_dir is not None:
        path = Path(data_dir) / data_file(lang)
        if not path.is_file():
            raise EvalDataError(f"{path}: no BELEBELE file for {lang.name} (expected {data_file(lang)} "
                                f"under the data directory)")
        rows = []
        for lineno, line in enumerate(read_text(path, eval_data_error).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalDataError(f"{path}:{lineno}: malformed JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise EvalDataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            _check(row, f"{path}:{lineno}")
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
        return rows
    from datasets import load_dataset

    ds = load_dataset("facebook/belebele", lang.flores, split="test")
    rows = []
    for i, row in enumerate(ds):
        _check(row, f"facebook/belebele[{lang.flores}] row {i}")
        rows.append(dict(row))
        if limit is not None and len(rows) >= limit:
            break
    return rows


def _check(row: dict, where: str) -> None:
    for f in FIELDS:
        if f not in row or row[f] is None:
            raise EvalDataError(f"{where}: field {f!r} missing")
    if str(row["correct_answer_num"]) not in ("1", "2", "3", "4"):
        raise EvalDataError(f"{where}: field 'correct_answer_num' must be 1..4, got {row['correct_answer_num']!r}")


def predict(model, tokenizer, rows: list[dict], lang: Language, *, template: str = "native",
            batch_size: int = 8, chat: bool = False, cache=None, progress: bool = True,
            share_passages: bool = False) -> list[dict]:
    """Per-item predictions: ``{"id", "gold", "pred", "correct", "loglik"}`` in row order.

    ``batch_size`` questions per forward; every context runs whole
    (:func:`clo.eval.loglik.score_batch`). With ``share_passages`` (and a model without
    sliding-window attention) the questions of one passage share one pass over the passage tokens
    (:func:`clo.eval.loglik.score_shared`): about 25% fewer tokens on BELEBELE, but no faster on
    the development CPU (two passes, extra padding), hence off by default.
    """
    # Here, not at the top: the CLI reads the task's declarations without loading torch.
    from clo.eval import loglik
    from clo.formatting import render_prompt

    items = []
    for i, row in enumerate(rows):
        ctx, conts = render(row, lang, template)
        if chat:
            ctx = render_prompt(tokenizer, ctx)
        item_id = f"{row.get('link', '')}#{row.get('question_number', i)}"
        items.append((i, item_id, ctx, conts, int(row["correct_answer_num"]) - 1))
    out: dict[int, dict] = {}
    pending = []
    for i, item_id, ctx, conts, gold in items:
        hit = cache.get(f"{i}:{item_id}") if cache is not None else None
        if hit is not None:
            out[i] = hit
        else:
            pairs = [loglik.encode_pair(tokenizer, ctx, c) for c in conts]
            # The harness encodes the context per pair; with the whitespace rule every pair's
            # context is the same string, so the first one stands for all.
            pending.append((i, item_id, pairs[0][0], [p[1] for p in pairs], gold))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bar = tqdm(total=len(items), initial=len(out), desc=f"belebele {lang.code} ({template})", unit="q",
               disable=not progress)

    def finish(chunk, scores):
        for (i, item_id, _, _, gold), s in zip(chunk, scores):
            pred = max(range(len(s)), key=lambda k: (s[k], -k))  # first of equal maxima, as argmax
            rec = {"id": item_id, "gold": gold, "pred": pred, "correct": pred == gold,
                   "loglik": [round(x, 6) for x in s]}
            out[i] = rec
            if cache is not None:
                cache.put(f"{i}:{item_id}", rec)
        bar.update(len(chunk))

    if share_passages and not loglik.has_sliding_window(model):
        # Questions on the same passage share the passage's tokens: run them once per passage.
        by_passage: dict[str, list] = {}
        for p in pending:
            by_passage.setdefault(rows[p[0]]["flores_passage"], []).append(p)
        groups = sorted(by_passage.values(), key=lambda g: -len(g[0][2]))
        batch: list[list] = []
        for g_i, g in enumerate(groups):
            batch.append(g)
            if sum(len(x) for x in batch) >= batch_size or g_i == len(groups) - 1:
                chunk = [p for grp in batch for p in grp]
                idx, k = [], 0
                for grp in batch:
                    idx.append(list(range(k, k + len(grp))))
                    k += len(grp)
                finish(chunk, loglik.score_shared(model, idx, [(c[2], c[3]) for c in chunk], pad_id))
                batch = []
    else:
        pending.sort(key=lambda p: -len(p[2]))
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            finish(chunk, loglik.score_batch(model, [c[2] for c in chunk], [c[3] for c in chunk], pad_id))
    bar.close()
    return [out[i] for i in range(len(items))]


def run(ctx: TaskContext, *, template: str = "native", limit: int | None = None, chat: bool = False,
        batch_size: int | None = None, share_passages: bool = False) -> TaskResult:
    limit = limit if limit is not None else ctx.cfg.eval.limit
    rows = load_rows(ctx.lang, ctx.data_dir, limit)
    if not rows:
        raise EvalDataError(f"no BELEBELE rows for {ctx.lang.flores}")
    records = predict(ctx.model, ctx.tokenizer, rows, ctx.lang, template=template,
                      batch_size=batch_size if batch_size is not None else (ctx.cfg.eval.batch_size or 8),
                      chat=chat, cache=ctx.cache,
                      share_passages=share_passages)
    acc, se = mean_stderr([float(r["correct"]) for r in records])
    counts = [sum(r["pred"] == k for r in records) for k in range(4)]
    metrics = {"accuracy": acc, "stderr": se, "n": len(records)}
    md = "| option | share of predictions |\n|---|---|\n" + "\n".join(
        f"| {'ABCD'[k]} | {counts[k] / len(records):.3f} |" for k in range(4))
    hashed = [{f: r[f] for f in FIELDS} for r in rows]
    return TaskResult(metrics, records, data_hash(hashed), markdown=md)


def missing_data(lang: Language, data_dir: Path | None, opts: dict) -> str | None:
    """What a BELEBELE run in ``lang`` lacks (None: nothing), read before a grid starts; the hub's
    ``facebook/belebele`` has every FLORES code of :mod:`clo.languages` (not checked offline)."""
    if data_dir is None:
        return None
    path = Path(data_dir) / data_file(lang)
    return None if path.is_file() else f"{path}: no BELEBELE file for {lang.name} ({data_file(lang)})"


def count_items(lang: Language, data_dir: Path | None, opts: dict, assumed) -> int | None:
    """Questions of ``lang``: the local file's records, else the hub's 900 per language (``assumed``)."""
    n = count_lines(Path(data_dir) / data_file(lang)) if data_dir is not None else None
    return n or int(assumed.get("belebele", 0)) or None


TASK = register(Task(
    "belebele", "BELEBELE reading comprehension, log-likelihood", run,
    data_files=lambda lang, opts: [data_file(lang)], hub="facebook/belebele", missing_data=missing_data,
    count_items=count_items,
    options=(Option("template", "prompt template: the language's own labels (paper Table 7) or "
                    "lm-evaluation-harness's English one", choices=tuple(TEMPLATES), default="native"),),
    variant="template",
))
