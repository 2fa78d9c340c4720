"""Language preference on held-out parallel quadruples: what CLO is trained to change, measured.

Every held-out cross-lingual record ``(x_en, y_en, x_tgt, y_tgt)`` (``held_out_file``: a JSONL of
the records schema, e.g. a grid's ``data/<lang>/validation.jsonl``, which a grid passes by
default) is scored by the model's log-probs of its four sequences, formatted and tokenised as in
training (:func:`clo.train.data.encode_records`, responses cut at ``max_length``, default
``train.max_length``), each prompt computed once for both its answers (:mod:`clo.eval.loglik`). With ``\\bar\\ell(y|x)`` the per-token mean log-prob
of response ``y`` given prompt ``x``, per item:

- ``tgt_preferred``: ``\\bar\\ell(y_tgt|x_tgt) > \\bar\\ell(y_en|x_tgt)``: asked in the target
  language, the target-language answer is the more likely one per token;
- ``en_preferred``: ``\\bar\\ell(y_en|x_en) > \\bar\\ell(y_tgt|x_en)``: asked in English, the English
  answer is (English kept);
- ``margin_tgt`` / ``margin_en``: those two differences themselves (nats per token);
- ``nll_tgt`` = ``-\\bar\\ell(y_tgt|x_tgt)``, ``nll_en`` = ``-\\bar\\ell(y_en|x_en)``.

Metrics are their means over the items, each with its standard error (``<name>_stderr``,
:func:`clo.eval.stats.mean_stderr`); the records keep every item's values, so that two models
scored on the same items are compared item by item (:mod:`clo.eval.paired`, the report's
preference table). CLO's loss pushes exactly these two preferences (with summed log-probs and
a reference model); SFT on target-language data raises ``y_tgt`` under both prompts. Nothing is
sampled: the result is deterministic.
"""

from __future__ import annotations

import math
from pathlib import Path

from tqdm.auto import tqdm

from clo.eval.core import EvalDataError, TaskContext, TaskResult, data_hash
from clo.eval.stats import mean_stderr
from clo.eval.task import Option, Task, count_lines, register

#: Per-item values whose means (with standard errors) are the task's metrics.
ITEM_METRICS = ("tgt_preferred", "en_preferred", "margin_tgt", "margin_en", "nll_tgt", "nll_en")

BATCH_SIZE = 8
CHUNK = 32  # items scored, then cached (an interrupted run resumes from there)
#: prompt language -> (the key of its own answer, the key of the other answer)
SIDES = {"tgt": ("tgt_tgt", "tgt_en"), "en": ("en_en", "en_tgt")}


def item_values(logp: dict[str, float], tokens: dict[str, int]) -> dict:
    """The per-item values from the summed log-probs and token counts of the four sequences
    (keys ``en_en``, ``en_tgt``, ``tgt_tgt``, ``tgt_en``: ``<prompt lang>_<response lang>``)."""
    mean = {k: logp[k] / tokens[k] for k in ("en_en", "en_tgt", "tgt_tgt", "tgt_en")}
    return {
        "tgt_preferred": mean["tgt_tgt"] > mean["tgt_en"],
        "en_preferred": mean["en_en"] > mean["en_tgt"],
        "margin_tgt": mean["tgt_tgt"] - mean["tgt_en"],
        "margin_en": mean["en_en"] - mean["en_tgt"],
        "nll_tgt": -mean["tgt_tgt"],
        "nll_en": -mean["en_en"],
    }


def summarize(records: list[dict]) -> dict:
    """``{name, name_stderr}`` for each of :data:`ITEM_METRICS`, and ``n``."""
    out: dict = {"n": len(records)}
    for name in ITEM_METRICS:
        m, se = mean_stderr([float(r[name]) for r in records])
        out[name], out[f"{name}_stderr"] = m, se
    return out


def _load(path: Path, lang: str):
    from clo.data.records import read_records

    try:
        records = read_records(path)
    except FileNotFoundError:
        raise EvalDataError(f"{path}: no such held-out records file") from None
    wrong = sorted({r.tgt_lang for r in records} - {lang})
    if wrong:
        raise EvalDataError(f"{path}: held-out records in {', '.join(wrong)}, not {lang!r}")
    return records


def _score(ctx: TaskContext, records, max_length: int, batch_size: int) -> dict[str, dict]:
    """``{id: {"logp": {key: sum}, "tokens": {key: n}, "truncated": [keys]}}`` of ``records``.

    Each prompt runs once for both of its answers (:func:`clo.eval.loglik.score_batch`: the answers
    continue from the prompt's key/value cache): a third fewer tokens than four whole sequences on
    the demo's data, 24 s instead of 39 s for 32 items on one CPU core. (Running the prefix common
    to a batch's prompts, a chat template's system turn, once per batch as well
    (:func:`clo.eval.loglik.score_shared`) measured no faster there.)"""
    from clo.eval.loglik import score_batch
    from clo.train.data import encode_records

    ds = encode_records(records, ctx.tokenizer, max_length, ctx.lang.code, path=ctx.name)
    if ds.rejected:
        first = ds.rejected[0]
        raise EvalDataError(f"preference: {len(ds.rejected)} held-out record(s) cannot be scored (first: "
                            f"{first['id']!r}: {first['reason']}); raise max_length")
    model = ctx.model
    pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0
    # One question per (item, prompt language): the prompt and its two answers.
    questions = [(i, side, ex.seqs[a][0], [ex.seqs[a][1], ex.seqs[b][1]])
                 for i, ex in enumerate(ds.examples) for side, (a, b) in SIDES.items()]
    questions.sort(key=lambda q: -(len(q[2]) + max(len(r) for r in q[3])))
    scores: dict[tuple[int, str], list[float]] = {}
    bar = tqdm(total=len(questions), desc=f"preference {ctx.lang.code}", unit="prompt")
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        got = score_batch(model, [q[2] for q in chunk], [q[3] for q in chunk], pad)
        for q, s in zip(chunk, got):
            scores[(q[0], q[1])] = s
        bar.update(len(chunk))
    bar.close()
    out = {}
    for i, ex in enumerate(ds.examples):
        logp = {}
        for side, (a, b) in SIDES.items():
            logp[a], logp[b] = scores[(i, side)]
        out[ex.id] = {"logp": logp, "tokens": {k: len(ex.seqs[k][1]) for k in ex.seqs},
                      "truncated": sorted(ex.truncated)}
    return out


def missing_data(lang, data_dir: Path | None, opts: dict) -> str | None:
    """What a preference run lacks (None: nothing), read before a grid starts (a grid passes the
    validation split its data stage writes)."""
    if lang.code == "en":
        return "preference compares the target language with English: run it in a target language, not en"
    if opts.get("held_out_file"):
        return None
    return "no held-out records: give held_out_file= (cross-lingual records, e.g. a grid's data/<lang>/validation.jsonl)"


def run_preference(ctx: TaskContext, *, held_out_file: str | None = None, limit: int | None = None,
                   max_length: int | None = None, batch_size: int | None = None) -> TaskResult:
    """``batch_size``: prompts per forward (default ``eval.batch_size``, else 8)."""
    msg = missing_data(ctx.lang, ctx.data_dir, {"held_out_file": held_out_file})
    if msg:
        raise EvalDataError(f"preference: {msg}")
    limit = limit if limit is not None else ctx.cfg.eval.limit
    max_length = max_length if max_length is not None else ctx.cfg.train.max_length
    batch_size = batch_size or ctx.cfg.eval.batch_size or BATCH_SIZE
    records = _load(Path(held_out_file), ctx.lang.code)[:limit]
    if not records:
        raise EvalDataError(f"preference: {held_out_file}: no held-out records")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise EvalDataError(f"preference: {held_out_file}: record ids are not unique")
    # max_length changes the scores and is no evaluation setting (the cache's fingerprint): it keys the items.
    def key(rid: str) -> str:
        return f"{rid}@{max_length}"

    todo = [r for r in records if key(r.id) not in ctx.cache]
    for start in range(0, len(todo), CHUNK):
        for rid, v in _score(ctx, todo[start:start + CHUNK], max_length, batch_size).items():
            ctx.cache.put(key(rid), v)
    out = []
    for r in records:
        v = ctx.cache.get(key(r.id))
        rec = {"id": r.id, **v, **item_values(v["logp"], v["tokens"])}
        if not all(math.isfinite(float(rec[k])) for k in ITEM_METRICS):
            raise EvalDataError(f"preference: item {r.id!r} has a non-finite log-prob: {v['logp']}")
        out.append(rec)
    metrics = summarize(out)
    metrics["max_length"] = max_length
    metrics["truncated"] = sum(bool(r["truncated"]) for r in out)
    rows = ["| measure | mean | ± SE |", "|---|---:|---:|"]
    labels = {"tgt_preferred": f"{ctx.lang.code} answer preferred, {ctx.lang.code} prompt (share)",
              "en_preferred": "en answer preferred, en prompt (share)",
              "margin_tgt": f"margin, {ctx.lang.code} prompt (nats/token)",
              "margin_en": "margin, en prompt (nats/token)",
              "nll_tgt": f"NLL {ctx.lang.code}|{ctx.lang.code} (nats/token)", "nll_en": "NLL en|en (nats/token)"}
    for k in ITEM_METRICS:
        rows.append(f"| {labels[k]} | {metrics[k]:.4f} | {metrics[k + '_stderr']:.4f} |")
    md = f"Held-out records: {held_out_file} ({len(out)} items, {metrics['truncated']} with a response cut at " \
         f"{max_length} tokens).\n\n" + "\n".join(rows)
    hashed = [[r.id, r.x_en, r.y_en, r.x_tgt, r.y_tgt] for r in records]
    return TaskResult(metrics, out, data_hash(hashed), md)



def count_items(lang, data_dir: Path | None, opts: dict, assumed) -> int | None:
    """The held-out records of ``held_out_file`` (unknown until a grid's data stage writes them)."""
    return count_lines(Path(opts["held_out_file"])) if opts.get("held_out_file") else None


TASK = register(Task(
    "preference", "target vs English answer preferred per token on held-out quadruples", run_preference,
    missing_data=missing_data, count_items=count_items,
    options=(Option("held_out_file", "held-out cross-lingual records (JSONL of x_en, y_en, x_tgt, y_tgt), "
                    "e.g. a grid's data/<lang>/validation.jsonl", metavar="FILE"),
             Option("max_length", "tokens of prompt and response scored (default: train.max_length)", int,
                    metavar="N")),
    reads_held_out=lambda lang, data_dir, opts: not opts.get("held_out_file"),
))
