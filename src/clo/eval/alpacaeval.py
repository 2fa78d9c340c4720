"""Judged win rate on the AlpacaEval instructions, in the target language (docs/eval.md).

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
``failures``; ``lc_win_rate`` is AlpacaEval 2's length-controlled win rate
(:func:`clo.eval.stats.length_controlled_win_rate`) with lengths in tokens of one tokenizer
(``lc_length``, ``length_tokenizer``; ``lc_length`` in the metrics says which). Only
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
    read_json_list,
)
from clo.eval.judge import judge_items, make_judge
from clo.eval.prompts import resolve as resolve_judge_prompt
from clo.eval.stats import length_controlled_win_rate, mean_stderr
from clo.eval.task import MAX_NEW_TOKENS, Option, Task, register
from clo.identity import loaded_model_label

# The repository's own loader is a dataset script, which datasets 4 and later refuse to run
# ("Dataset scripts are no longer supported"); its data file reads with the packaged JSON loader.
ALPACA_EVAL_HUB_FILE = "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json"
#: The instructions (with text-davinci-003's reference answers) under the data directory.
DATA_FILE = "alpaca_eval/text_davinci_003.json"


def load_instructions(path: Path | None, data_dir: Path | None) -> list[dict]:
    if path is None and data_dir is not None:
        path = Path(data_dir) / DATA_FILE
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
    # The paper's Table 8: "answer in the same language as the input", in the language, as the
    # system message of every answer (the model's and a generated baseline's alike).
    system = {"system": ctx.lang.answer_in_language} if ev.system_prompt == "answer-in-language" else {}
    if todo:
        for idx, texts in generator.iter_generate([prompts[i] for i in todo], max_new_tokens=max_new_tokens,
                                                  temperature=ev.temperature, top_p=ev.top_p, seed=ev.seed,
                                                  batch_size=batch_size, **system):
            for j, t in zip(idx, texts):
                out[todo[j]] = t
                ctx.cache.put(f"{prefix}:{todo[j]}", t)
            bar.update(len(idx))
    bar.close()
    return out


def eval_translator(cfg):
    """The translator of the evaluation sets: ``eval.translator``, else ``data.translator``."""
    return cfg.eval.translator or cfg.data.translator


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
    from clo.data.translators import translate_texts

    return rows, english, translate_texts(english, "en", ctx.lang.code, eval_translator(ctx.cfg),
                                          ctx.output_dir / f"alpacaeval-instructions-{ctx.lang.code}.sqlite")


def _outputs_file(rows: list[dict], instructions: list[str], outputs: list[str], generator: str) -> list[dict]:
    """Answers in alpaca_eval's ``model_outputs.json`` format."""
    return [{"instruction": instructions[i], "output": outputs[i], "generator": generator,
             "dataset": rows[i].get("dataset", "")} for i in range(len(rows))]


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


ALPACA_EVAL_DIFFICULTY_HUB = ("tatsu-lab/alpaca_eval", "instruction_difficulty.csv")


def length_counter(ctx: TaskContext, lc_length: str = "tokens", length_tokenizer: str | None = None):
    """``(name, count)``: how the length-controlled win rate measures an output's length.

    ``tokens`` (the default): tokens of ONE tokenizer, ``length_tokenizer`` (a model spec or path) or
    else the evaluated model's, for the model's and the baseline's outputs alike, so that an answer
    in Chinese and one in English (a model answering in the wrong language) have comparable
    lengths; characters make a CJK answer look about three times shorter than its English
    equivalent. ``chars``: characters, alpaca_eval's own measure (comparable within one Latin script).
    """
    if lc_length == "chars":
        return "chars", len
    if lc_length != "tokens":
        raise EvalDataError(f"alpacaeval: lc_length={lc_length!r}; expected 'tokens' or 'chars'")
    if length_tokenizer:
        from clo.models import load_tokenizer

        tok, name = load_tokenizer(length_tokenizer), length_tokenizer
    else:
        tok, name = ctx.tokenizer, getattr(ctx.tokenizer, "name_or_path", "") or ctx.model_name
    return f"tokens:{name}", lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def load_instruction_difficulty(source: str | None, data_dir: Path | None, n: int) -> list[float] | None:
    """Per-instruction difficulties of alpaca_eval's LC GLM, by position in the instruction file
    (alpaca_eval's ``instruction_difficulty.csv``: columns ``index, instruction_difficulty``, one row
    per AlpacaEval instruction). ``source``: a CSV path, ``"hub"`` (the file on the hub), or None:
    ``<data_dir>/alpaca_eval/instruction_difficulty.csv`` when it exists, else no instruction term."""
    import csv

    if source is None:
        default = Path(data_dir) / "alpaca_eval" / "instruction_difficulty.csv" if data_dir else None
        if default is None or not default.is_file():
            return None
        path = default
    elif source == "hub":
        from huggingface_hub import hf_hub_download

        repo, name = ALPACA_EVAL_DIFFICULTY_HUB
        path = Path(hf_hub_download(repo_id=repo, filename=name, repo_type="dataset"))
    else:
        path = Path(source)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    try:
        by_index = {int(r["index"]): float(r["instruction_difficulty"]) for r in rows}
    except (KeyError, TypeError, ValueError) as e:
        raise EvalDataError(f"{path}: expected columns 'index' and 'instruction_difficulty' ({e})") from None
    missing = [i for i in range(n) if i not in by_index]
    if missing:
        raise EvalDataError(f"{path}: no difficulty for instruction(s) {missing[:5]} (of {n} evaluated)")
    return [by_index[i] for i in range(n)]


def _win_rate_metrics(scores: list[float], len_model: list[int], len_base: list[int], failures: int,
                      difficulty: list[float] | None = None, lc_length: str = "chars") -> dict:
    """The metrics of the judged items. Without one the rates are null, with the reason: NaN is
    not JSON, and strict parsers reject the file. ``difficulty``: one per judged item, or None."""
    counts = {"n": len(scores), "wins": sum(s == 1.0 for s in scores), "ties": sum(s == 0.5 for s in scores),
              "losses": sum(s == 0.0 for s in scores), "failures": failures}
    # Which of alpaca_eval's GLMs this is (see length_controlled_win_rate), and the length measure.
    lc_info = {"lc_glm": "length_controlled_noreg" if difficulty is not None else "length_controlled_minimal",
               "lc_length": lc_length}
    if not scores:
        reason = (f"no verdict: all {failures} judgments failed (see the records' 'error'); they are judged "
                  "again on the next run" if failures else "no items")
        return {"win_rate": None, "stderr": None, "lc_win_rate": None, **counts, **lc_info, "reason": reason}
    wr, se = mean_stderr(scores)
    lc = length_controlled_win_rate(scores, len_model, len_base, instruction_difficulty=difficulty)
    return {"win_rate": wr, "stderr": se, "lc_win_rate": lc, **counts, **lc_info}


def win_rate_line(metrics: dict, n_items: int) -> str:
    """The win rate with the number of items it is over (judgments that failed are not among
    them, and say so): ``win rate 75.0 ± 12.1 % (n=6 of 7 items; 1 judgment failed)``."""
    fails = metrics.get("failures") or 0
    failed = f"; {fails} judgment{'s' if fails != 1 else ''} failed, judged again on the next run" if fails else ""
    if metrics.get("win_rate") is None:
        return f"win rate: none (n=0 of {n_items} items{failed})"
    se = metrics.get("stderr")
    shown = f"{100 * metrics['win_rate']:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")
    return f"win rate {shown} % (n={metrics['n']} of {n_items} items{failed})"


def run(ctx: TaskContext, *, limit: int | None = None, instructions_file: str | None = None,
        translated_file: str | None = None, baseline=None, baseline_outputs: str | None = None,
        baseline_name: str | None = None, batch_size: int | None = None, max_new_tokens: int | None = None,
        judge=None, lc_length: str = "tokens", length_tokenizer: str | None = None,
        instruction_difficulty: str | None = None, also_judge_with: str | None = None) -> TaskResult:
    ev = ctx.cfg.eval
    rows, english, instructions = _instructions(ctx, limit, instructions_file, translated_file)
    n = len(rows)
    # Before generating: a bad length option or difficulty file should not cost a generation run.
    lc_name, length = length_counter(ctx, lc_length, length_tokenizer)
    difficulty = load_instruction_difficulty(instruction_difficulty, ctx.data_dir, n)
    prompt = resolve_judge_prompt(ev.judge, ctx.lang)
    # The paper's Table 9: the same answers judged with a second prompt too.
    also = None
    if also_judge_with is not None:
        from clo.eval.prompts import JUDGE_PROMPTS
        from clo.registry import unknown_name_message

        if also_judge_with not in JUDGE_PROMPTS:
            raise EvalDataError("alpacaeval: also_judge_with: "
                                + unknown_name_message("judge prompt", also_judge_with, JUDGE_PROMPTS))
        also = resolve_judge_prompt(ev.judge.model_copy(update={"prompt": also_judge_with}), ctx.lang)
    bs = batch_size or ev.batch_size
    mnt = max_new_tokens or ev.max_new_tokens
    outputs = _generate_cached(ctx, ctx.generator, instructions, "model", "alpacaeval: model", bs, mnt)

    if baseline is not None:
        b_name = baseline if isinstance(baseline, str) else loaded_model_label(baseline[0])
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
    verdicts = _judge_all(ctx, judge, prompt, instructions, outputs, base)
    records = [{"id": str(i), "instruction": instructions[i], "instruction_en": english[i],
                "output": outputs[i], "baseline_output": base[i], **verdicts[i]} for i in range(n)]
    metrics = _verdict_metrics(verdicts, outputs, base, length, difficulty, lc_name)
    if also_judge_with is not None:
        second = _judge_all(ctx, judge, also, instructions, outputs, base)
        extra_m = _verdict_metrics(second, outputs, base, length, difficulty, lc_name)
        extra_m["judge_prompt"] = also_judge_with if also is None else f"{also.name}@{also.digest}"
        metrics["also_judged"] = {also_judge_with: extra_m}
        for r, v in zip(records, (second[i] for i in range(n))):
            r["also_judged"] = {also_judge_with: {"score": v["score"], "failed": v["failed"]}}
    extra = {
        f"{ctx.name}.model_outputs.json": _outputs_file(rows, instructions, outputs, ctx.model_name),
        f"{ctx.name}.baseline_outputs.json": _outputs_file(rows, instructions, base, b_name),
    }
    metrics["judge_prompt"] = ev.judge.prompt if prompt is None else f"{prompt.name}@{prompt.digest}"
    metrics["system_prompt"] = ev.system_prompt
    md = (f"baseline: `{b_name}`; judge: `{getattr(judge, 'name', type(judge).__name__)}`; judge prompt: "
          f"`{metrics['judge_prompt']}`; system prompt: `{ev.system_prompt}`")
    md += "\n\n" + win_rate_line(metrics, n)
    return TaskResult(metrics, records, data_hash(instructions), md, extra)


def _judge_all(ctx: TaskContext, judge, prompt, instructions: list[str], outputs: list[str],
               base: list[str]) -> dict[int, dict]:
    """Every item's verdict with ``prompt`` (None: the judge module's own), cached verdicts reused."""
    ev = ctx.cfg.eval
    n = len(instructions)
    # A failed judgment is never final (the judge or its endpoint may have been fixed since), so
    # it is not cached; caches written before that hold some, which are judged again too. A
    # verdict of another prompt text (a changed eval.judge.prompt_file) is not this prompt's.
    vkey = "verdict" if prompt is None else f"verdict:{prompt.name}:{prompt.digest}"
    verdicts = {i: ctx.cache.get(f"{vkey}:{i}") for i in range(n)}
    pending = [i for i in range(n) if verdicts[i] is None or verdicts[i]["failed"]]
    bar = tqdm(total=n, initial=n - len(pending), desc="alpacaeval: judge", unit="pair")
    # Up to eval.judge.concurrency requests at once; each verdict is cached as it arrives (a killed
    # run resumes with those), and the records keep the items' order.
    try:
        for k, v in judge_items(judge, [(str(i), instructions[i], outputs[i], base[i]) for i in pending],
                                ctx.lang, seed=ev.seed, retries=ev.judge.retries,
                                concurrency=ev.judge.concurrency, prompt=prompt):
            i = pending[k]
            verdicts[i] = v
            if not v["failed"]:
                ctx.cache.put(f"{vkey}:{i}", v)
            bar.update(1)
    finally:
        bar.close()
    return verdicts


def _verdict_metrics(verdicts: dict[int, dict], outputs: list[str], base: list[str], length, difficulty,
                     lc_name: str) -> dict:
    scores, lm, lb, judged = [], [], [], []
    failures = 0
    for i in range(len(outputs)):
        v = verdicts[i]
        if v["failed"]:
            failures += 1
        else:
            scores.append(v["score"])
            lm.append(length(outputs[i]))
            lb.append(length(base[i]))
            judged.append(i)
    return _win_rate_metrics(scores, lm, lb, failures,
                             None if difficulty is None else [difficulty[i] for i in judged], lc_name)


def missing_data(lang, data_dir: Path | None, opts: dict) -> str | None:
    """What an AlpacaEval run lacks (None: nothing), read before a grid starts: the files its
    options name, and the instructions (``<data_dir>/alpaca_eval/text_davinci_003.json``, or the hub)."""
    for key in ("instructions_file", "translated_file", "baseline_outputs"):
        if opts.get(key) and not Path(opts[key]).is_file():
            return f"{opts[key]}: no such file ({key})"
    if not opts.get("instructions_file") and data_dir is not None:
        path = Path(data_dir) / DATA_FILE
        if not path.is_file():
            return f"{path}: no AlpacaEval instructions ({DATA_FILE})"
    return None


def count_items(lang, data_dir: Path | None, opts: dict, assumed) -> int | None:
    """Instructions: those of the local file (``instructions_file``, else the data directory's),
    else the hub's 805 (``assumed``)."""
    path = opts.get("instructions_file")
    if path or data_dir is not None:
        try:
            return len(load_instructions(Path(path) if path else None, data_dir))
        except (OSError, ValueError):  # EvalDataError is one: the data check says what is wrong
            pass
    return int(assumed.get("alpacaeval", 0)) or None


def _data_files(lang, opts: dict) -> list[str]:
    return [] if opts.get("instructions_file") else [DATA_FILE]


_INSTRUCTIONS = (
    Option("instructions_file", "instructions (alpaca_eval JSON; default: the data directory's "
           f"{DATA_FILE}, else the hub)", metavar="FILE"),
    Option("translated_file", "instructions already in the target language (a JSON list, same order)",
           metavar="FILE"),
)

def failed_judgments(metrics: dict, options: dict) -> str | None:
    """Judgments that failed make the win rate one over fewer items than asked for: said, unless
    ``allow_failed_judgments``."""
    failures = metrics.get("failures") or 0
    if not failures or options.get("allow_failed_judgments"):
        return None
    return (f"{failures} judgment(s) failed (the records' 'error' says why): the win rate is over "
            f"{metrics.get('n', 0)} items only; rerun to judge them again, or pass --allow-failed-judgments "
            "to accept it")


TASK = register(Task(
    "alpacaeval", "judged win rate against a baseline on the AlpacaEval instructions", run,
    data_files=_data_files, hub="tatsu-lab/alpaca_eval", missing_data=missing_data, count_items=count_items,
    options=(Option("baseline", "the baseline model: offline name, local directory or hub id", metavar="MODEL"),
             Option("baseline_outputs", "the baseline's answers (alpaca_eval JSON)", metavar="FILE"),
             *_INSTRUCTIONS, MAX_NEW_TOKENS,
             Option("also_judge_with", "judge the same answers with this judge prompt too (the paper's Table 9; "
                    "the result's metrics also_judged)", choices=("clo", "alpaca_eval", "paper")),
             Option("allow_failed_judgments", "exit 0 even when some judgments failed (the win rate is then "
                    "over the judged items only; without it such a run exits 3)", bool, passed=False)),
    pairwise=True, incomplete=failed_judgments,
))
OUTPUTS_TASK = register(Task(
    "alpacaeval-outputs", "the model's answers to the AlpacaEval instructions, unjudged", run_outputs,
    data_files=_data_files, hub="tatsu-lab/alpaca_eval", missing_data=missing_data, count_items=count_items,
    options=(*_INSTRUCTIONS, MAX_NEW_TOKENS),
))
