"""Judged win rate on the AlpacaEval instructions, in the target language (DESIGN.md section 3).

Instructions come from an alpaca_eval JSON file (list of ``{instruction, output, generator,
dataset}``; ``<data_dir>/alpaca_eval/text_davinci_003.json`` by default) or the hub
(``tatsu-lab/alpaca_eval``). For a target language other than English they are translated with
the data pipeline's translator (``cfg.data.translator``, cached next to the results), or read from
``translated_file`` (a JSON list of strings, or of objects with ``instruction``, in the same order).

The baseline is a second model (``baseline=`` spec or ``(model, tokenizer)``), whose responses
are generated exactly like the model's, or an alpaca_eval outputs file (``baseline_outputs=``);
for English the instruction file's own ``output`` field serves when neither is given.

Metrics are fractions in [0, 1]: ``win_rate`` = mean score over judged items (win 1, tie 0.5,
loss 0) with its standard error; judge failures are excluded from ``n`` and counted in
``failures``; ``lc_win_rate`` is :func:`clo.eval.stats.length_controlled_win_rate`. Only
successful verdicts are cached: a failed judgment is requested again on the next run. With no
successful verdict the rates are null and ``reason`` says why.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from clo.eval.core import (
    EvalDataError,
    TaskContext,
    TaskResult,
    data_hash,
    model_identity,
    read_json_list,
    register_task,
)
from clo.eval.judge import judge_item, make_judge
from clo.eval.stats import length_controlled_win_rate, mean_stderr

# The repository's own loader is a dataset script, which datasets 4 and later refuse to run
# ("Dataset scripts are no longer supported"); its data file reads with the packaged JSON loader.
ALPACA_EVAL_HUB_FILE = "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json"


def load_instructions(path: Path | None, data_dir: Path | None) -> list[dict]:
    if path is None and data_dir is not None:
        path = Path(data_dir) / "alpaca_eval" / "text_davinci_003.json"
    if path is not None:
        rows, where = read_json_list(Path(path), "AlpacaEval"), str(path)
    else:
        from datasets import load_dataset

        rows = [dict(r) for r in load_dataset("json", data_files=ALPACA_EVAL_HUB_FILE, split="train")]
        where = ALPACA_EVAL_HUB_FILE
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not r["instruction"].strip():
            raise EvalDataError(f"{where}: item {i}: field 'instruction' missing or empty")
    return rows


def _texts_from(path: Path, n: int, key: str, what: str, instructions: list[str] | None = None) -> list[str]:
    """Field ``key`` of the first ``n`` entries. With ``instructions``, an entry that names its
    instruction must name the one evaluated at its position: answers to other (or differently
    translated) instructions would otherwise be judged as if they fit."""
    data = read_json_list(path, what)
    if len(data) < n:
        raise EvalDataError(f"{path}: {len(data)} {what} entries, need {n} (one per instruction, same order)")
    out = []
    for i, x in enumerate(data[:n]):
        text = x if isinstance(x, str) else (x.get(key) if isinstance(x, dict) else None)
        if not isinstance(text, str):
            raise EvalDataError(f"{path}: item {i}: field {key!r} missing (expected a string or an object with {key!r})")
        named = x.get("instruction") if isinstance(x, dict) and instructions is not None else None
        if named and named != instructions[i]:
            raise EvalDataError(f"{path}: item {i}: field 'instruction' is {named[:60]!r}, but the instruction "
                                f"evaluated is {instructions[i][:60]!r} (another language, translation or order?)")
        out.append(text)
    return out


def _generate_cached(ctx: TaskContext, generator, prompts: list[str], prefix: str, desc: str,
                     batch_size: int, max_new_tokens: int) -> list[str]:
    ev = ctx.cfg.eval
    out = [ctx.cache.get(f"{prefix}:{i}") for i in range(len(prompts))]
    todo = [i for i, o in enumerate(out) if o is None]
    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=desc, unit="resp")
    if todo:
        for idx, texts in generator.iter_generate([prompts[i] for i in todo], max_new_tokens=max_new_tokens,
                                                  temperature=ev.temperature, top_p=ev.top_p, seed=ev.seed,
                                                  batch_size=batch_size):
            for j, t in zip(idx, texts):
                out[todo[j]] = t
                ctx.cache.put(f"{prefix}:{todo[j]}", t)
            bar.update(len(idx))
    bar.close()
    return out


def _instructions(ctx: TaskContext, limit: int | None, instructions_file: str | None,
                  translated_file: str | None) -> tuple[list[dict], list[str], list[str]]:
    """(rows, English instructions, instructions in the context's language)."""
    limit = limit if limit is not None else ctx.cfg.eval.limit
    rows = load_instructions(Path(instructions_file) if instructions_file else None, ctx.data_dir)[:limit]
    english = [r["instruction"] for r in rows]
    if ctx.lang.code == "en":
        return rows, english, english
    if translated_file:
        return rows, english, _texts_from(Path(translated_file), len(rows), "instruction", "translated instruction")
    from clo.data.translate import translate_texts

    return rows, english, translate_texts(english, "en", ctx.lang.code, ctx.cfg.data.translator,
                                          ctx.output_dir / f"alpacaeval-instructions-{ctx.lang.code}.sqlite")


def _outputs_file(rows: list[dict], instructions: list[str], outputs: list[str], generator: str) -> list[dict]:
    """Answers in alpaca_eval's ``model_outputs.json`` format."""
    return [{"instruction": instructions[i], "output": outputs[i], "generator": generator,
             "dataset": rows[i].get("dataset", "")} for i in range(len(rows))]


@register_task("alpacaeval-outputs", description="the model's answers to the AlpacaEval instructions, unjudged",
               output_name=lambda lang, opts: f"alpacaeval-outputs-{lang}")
def run_outputs(ctx: TaskContext, *, limit: int | None = None, instructions_file: str | None = None,
                translated_file: str | None = None, batch_size: int | None = None,
                max_new_tokens: int | None = None) -> TaskResult:
    """Writes ``<name>.model_outputs.json`` in alpaca_eval's format: generated exactly as the
    ``alpacaeval`` task generates a model's answers, so that file can stand in for a baseline
    model (``baseline_outputs=``) in any number of comparisons, or go to alpaca_eval itself."""
    ev = ctx.cfg.eval
    rows, english, instructions = _instructions(ctx, limit, instructions_file, translated_file)
    outputs = _generate_cached(ctx, ctx.generator, instructions, "model", "alpacaeval: model",
                               batch_size or ev.batch_size, max_new_tokens or ev.max_new_tokens)
    records = [{"id": str(i), "instruction": instructions[i], "instruction_en": english[i], "output": outputs[i]}
               for i in range(len(rows))]
    lengths = [len(o) for o in outputs]
    metrics = {"n": len(rows), "mean_chars": sum(lengths) / len(lengths) if lengths else None}
    if not lengths:
        metrics["reason"] = "mean_chars: no instructions"
    extra = {f"{ctx.name}.model_outputs.json": _outputs_file(rows, instructions, outputs, ctx.model_name)}
    return TaskResult(metrics, records, data_hash(instructions), "", extra)


def _win_rate_metrics(scores: list[float], len_model: list[int], len_base: list[int], failures: int) -> dict:
    """The metrics of the judged items. Without one the rates are null, with the reason: NaN is
    not JSON, and strict parsers reject the file."""
    counts = {"n": len(scores), "wins": sum(s == 1.0 for s in scores), "ties": sum(s == 0.5 for s in scores),
              "losses": sum(s == 0.0 for s in scores), "failures": failures}
    if not scores:
        reason = (f"no verdict: all {failures} judgments failed (see the records' 'error'); they are judged "
                  "again on the next run" if failures else "no items")
        return {"win_rate": None, "stderr": None, "lc_win_rate": None, **counts, "reason": reason}
    wr, se = mean_stderr(scores)
    return {"win_rate": wr, "stderr": se, "lc_win_rate": length_controlled_win_rate(scores, len_model, len_base),
            **counts}


@register_task("alpacaeval", description="judged win rate against a baseline on the AlpacaEval instructions")
def run(ctx: TaskContext, *, limit: int | None = None, instructions_file: str | None = None,
        translated_file: str | None = None, baseline=None, baseline_outputs: str | None = None,
        baseline_name: str | None = None, batch_size: int | None = None, max_new_tokens: int | None = None,
        judge=None) -> TaskResult:
    ev = ctx.cfg.eval
    rows, english, instructions = _instructions(ctx, limit, instructions_file, translated_file)
    n = len(rows)
    bs = batch_size or ev.batch_size
    mnt = max_new_tokens or ev.max_new_tokens
    outputs = _generate_cached(ctx, ctx.generator, instructions, "model", "alpacaeval: model", bs, mnt)

    if baseline is not None:
        b_name = baseline if isinstance(baseline, str) else model_identity(baseline[0], None)
        b_gen = ctx.generator_for(baseline)
        try:
            base = _generate_cached(ctx, b_gen, instructions, "baseline", "alpacaeval: baseline", bs, mnt)
        finally:
            b_gen.close()
    elif baseline_outputs:
        base = _texts_from(Path(baseline_outputs), n, "output", "baseline output", instructions)
        b_name = str(baseline_outputs)
    elif ctx.lang.code == "en" and all(isinstance(r.get("output"), str) for r in rows):
        base = [r["output"] for r in rows]
        b_name = rows[0].get("generator", "reference") if rows else "reference"
    else:
        raise EvalDataError("alpacaeval: no baseline; pass baseline=<model> or baseline_outputs=<alpaca_eval JSON> "
                            "(the instruction file's English reference outputs serve only for English)")
    b_name = baseline_name or b_name

    judge = judge if judge is not None else make_judge(ev.judge)
    records, scores, lm, lb = [], [], [], []
    failures = 0
    bar = tqdm(total=n, desc="alpacaeval: judge", unit="pair")
    for i in range(n):
        item_id = str(i)
        v = ctx.cache.get(f"verdict:{i}")
        # A failed judgment is never final (the judge or its endpoint may have been fixed since), so
        # it is not cached; caches written before that hold some, which are judged again too.
        if v is None or v["failed"]:
            v = judge_item(judge, item_id, instructions[i], outputs[i], base[i], ctx.lang,
                           seed=ev.seed, retries=ev.judge.retries)
            if not v["failed"]:
                ctx.cache.put(f"verdict:{i}", v)
        bar.update(1)
        if v["failed"]:
            failures += 1
        else:
            scores.append(v["score"])
            lm.append(len(outputs[i]))
            lb.append(len(base[i]))
        records.append({"id": item_id, "instruction": instructions[i], "instruction_en": english[i],
                        "output": outputs[i], "baseline_output": base[i], **v})
    bar.close()
    metrics = _win_rate_metrics(scores, lm, lb, failures)
    extra = {
        f"{ctx.name}.model_outputs.json": _outputs_file(rows, instructions, outputs, ctx.model_name),
        f"{ctx.name}.baseline_outputs.json": _outputs_file(rows, instructions, base, b_name),
    }
    md = f"baseline: `{b_name}`; judge: `{getattr(judge, 'name', type(judge).__name__)}`"
    return TaskResult(metrics, records, data_hash(instructions), md, extra)
