"""The paper's tables from stored metrics: collected from a grid directory, rendered without models.

Every number comes from a finished evaluation's done-marker (``eval/<task>_<lang>.done.json``,
the metrics dict that ``clo.eval.evaluate`` returned) or, for evaluations run outside a grid,
from the result file ``clo eval`` writes, ``eval/<task>_<lang>/<task>-<lang>.json``. The grid's ``plan.json`` says which runs and
evaluations should exist, so a run that is missing or failed is a cell shown as ``—`` (Markdown)
or left empty (CSV), never a zero.

Rates are stored as fractions and shown as percentages with one decimal; ``±`` is one standard
error, and the number of items it rests on follows it (``62.5 ± 4.1 (n=140)``): ``0.0 ± 0.0``
means something else on 4 items than on 400.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

GAP = "—"
Z95 = 1.959963984540054  # the two-sided 95 % normal quantile


@dataclass(frozen=True)
class Cell:
    value: float | None = None  # a fraction (shown as %) or a difference in percentage points
    se: float | None = None
    text: str | None = None  # free text (sample answers, statuses)
    pct: bool = True  # False: a plain number (nats per token), shown with 3 decimals, never scaled
    n: int | None = None  # the items the value (and its standard error) rests on

    @property
    def missing(self) -> bool:
        return self.value is None and self.text is None

    @property
    def _scale(self) -> float:
        return 100.0 if self.pct else 1.0

    def markdown(self) -> str:
        if self.text is not None:
            return self.text.replace("|", "\\|").replace("\n", "<br>")
        if self.value is None:
            return GAP
        digits = 1 if self.pct else 3
        s = f"{self._scale * self.value:.{digits}f}"
        if self.se is None:
            return s
        return f"{s} ± {self._scale * self.se:.{digits}f}" + (f" (n={self.n})" if self.n is not None else "")


@dataclass
class Table:
    name: str  # file stem: table1_winrates
    title: str
    keys: list[str]  # row-key column names (model, lang, ...)
    columns: list[str]
    rows: list[tuple[list[str], list[Cell]]] = field(default_factory=list)
    note: str = ""
    numeric: bool = True  # right-align the value columns

    def to_markdown(self) -> str:
        head = self.keys + self.columns
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] * len(self.keys) + [("---:" if self.numeric else "---")] * len(self.columns)) + "|")
        for keys, cells in self.rows:
            lines.append("| " + " | ".join(list(keys) + [c.markdown() for c in cells]) + " |")
        if not self.rows:
            lines.append("| " + " | ".join([GAP] * len(head)) + " |")
        return "\n".join(lines) + "\n"

    def csv_rows(self) -> list[list[str]]:
        """Header, then one line per row; values in %, standard errors in their own ``_se`` columns."""
        header = list(self.keys)
        for c in self.columns:
            header += [c, f"{c}_se"]
        out = [header]
        for keys, cells in self.rows:
            line = list(keys)
            for c in cells:
                if c.text is not None:
                    line += [c.text, ""]
                else:
                    line += ["" if c.value is None else f"{c._scale * c.value:.4f}",
                             "" if c.se is None else f"{c._scale * c.se:.4f}"]
            out.append(line)
        return out

    def to_json(self) -> dict:
        return {
            "name": self.name, "title": self.title, "keys": self.keys, "columns": self.columns,
            "rows": [{"keys": k, "cells": [{"value": c.value, "se": c.se, "text": c.text} for c in cells]}
                     for k, cells in self.rows],
        }

    @property
    def empty(self) -> bool:
        """Every cell a gap (or no cell at all): nothing to show."""
        return all(c.missing for _, cells in self.rows for c in cells)


# ---------------------------------------------------------------------------------------------
# Metrics: which field of each task's metrics is its headline number and its standard error


def _binomial_se(p: float, n: int) -> float | None:
    return math.sqrt(p * (1 - p) / n) if n and n > 0 else None


def _get(m: dict, value: str, se: str | None) -> Cell:
    v = m.get(value)
    if v is None:
        return Cell()
    s = m.get(se) if se else None
    if s is None and se and m.get("n"):
        s = _binomial_se(float(v), int(m["n"]))
    n = m.get("n")
    return Cell(float(v), None if s is None else float(s), n=int(n) if isinstance(n, (int, float)) else None)


def _num(m: dict, value: str) -> Cell:
    """A plain number (not a share) and its ``<value>_stderr``."""
    v, se = m.get(value), m.get(f"{value}_stderr")
    n = m.get("n")
    return Cell() if v is None else Cell(float(v), None if se is None else float(se), pct=False,
                                         n=int(n) if isinstance(n, (int, float)) else None)


#: task -> {metric name: function(metrics dict) -> Cell}
METRICS: dict[str, dict[str, Callable[[dict], Cell]]] = {
    "belebele": {"accuracy": lambda m: _get(m, "accuracy", "stderr")},
    "mmmlu": {"accuracy": lambda m: _get(m, "accuracy", "stderr"),
              "failure_rate": lambda m: _get(m, "failure_rate", None)},
    "alpacaeval": {"win_rate": lambda m: _get(m, "win_rate", "stderr")},
    "fidelity": {"rate": lambda m: _get(m, "rate", "stderr"),
                 "echo_rate": lambda m: _get(m, "echo_rate", "echo_rate_stderr"),
                 "rate_excluding_echoes": lambda m: _get(
                     {**m, "n": m.get("n_excluding_echoes")}, "rate_excluding_echoes", "rate_excluding_echoes_stderr")},
    "preference": {
        **{k: (lambda m, k=k: _get(m, k, f"{k}_stderr")) for k in ("tgt_preferred", "en_preferred")},
        **{k: (lambda m, k=k: _num(m, k)) for k in ("margin_tgt", "margin_en", "nll_tgt", "nll_en")},
    },
    "confusion": {"lpr": lambda m: _get(m, "lpr", None), "wpr": lambda m: _get(m, "wpr", None),
                  "lcpr": lambda m: _get(m, "lcpr", None)},
}


# ---------------------------------------------------------------------------------------------
# Collecting stored results


@dataclass
class RunResult:
    info: dict  # RunSpec.describe() (+ evals, tasks) from plan.json / run.json
    metrics: dict[str, dict] = field(default_factory=dict)  # eval key (belebele_de) -> metrics
    status: str = "missing"  # done | partial | failed | missing
    error: str | None = None
    samples: list[dict] | None = None
    trained: int | None = None  # the examples (quadruples) its training read, from train.done.json

    def cell(self, key: str, metric: str) -> Cell:
        m = self.metrics.get(key)
        if m is None:
            return Cell()
        task = key.rsplit("_", 1)[0]
        fn = METRICS.get(task, {}).get(metric)
        if fn is None:
            return Cell(float(m[metric])) if isinstance(m.get(metric), (int, float)) else Cell()
        return fn(m)


@dataclass
class GridResults:
    grid_dir: Path
    plan: dict
    runs: dict[str, RunResult]
    data_warnings: dict[str, list[str]] = field(default_factory=dict)  # data/<lang> -> its build's warnings

    def trained_on(self, size: int | None = "main") -> str:  # type: ignore[assignment]
        """The examples the runs of ``size`` trained on, as the caption says it: ``"6080"``, a range
        ``"3040-6080"`` when runs differ, or ``""`` when no run recorded it."""
        size = self.main_size if size == "main" else size
        counts = sorted({r.trained for r in self.runs.values()
                         if r.trained is not None and r.info["method"] is not None and r.info["size"] == size})
        if not counts:
            return ""
        return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"

    @property
    def seeds(self) -> list[int]:
        return sorted({s for r in self.runs.values() for s in (r.info.get("seeds") or [])})

    def seeds_note(self) -> str:
        """The caption's sentence for a grid with a seeds axis (empty without one)."""
        seeds = self.seeds
        return "" if not seeds else (f" Runs over seeds {', '.join(map(str, seeds))}: mean ± SD over the seeds "
                                     "(not one standard error).")

    def size_note(self, size: int | None = "main") -> str:  # type: ignore[assignment]
        """``Training size: all (6080 quadruples trained on).``, plus the data builds' warnings."""
        size = self.main_size if size == "main" else size
        got = self.trained_on(size)
        note = f"Training size: {_size_label(size)}" + (f" ({got} quadruples trained on)." if got else ".")
        warn = [f"{lang}: {w}" for lang, ws in self.data_warnings.items() for w in ws]
        return note + ("" if not warn else " Data: " + "; ".join(warn) + ".") + self.seeds_note()

    @property
    def sizes(self) -> list[int | None]:
        return list(self.plan.get("sizes") or [None])

    @property
    def main_size(self) -> int | None:
        """The size the main tables report: the whole split when the grid has it, else the largest."""
        sizes = self.sizes
        return None if None in sizes else max(sizes)

    @property
    def baseline(self) -> str:
        return self.plan.get("baseline", "sft")

    def cells(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for r in self.runs.values():
            k = (r.info["model"], r.info["lang"])
            if k not in out:
                out.append(k)
        return out

    def find(self, model: str, lang: str, variant: str, size: int | None = "main") -> RunResult | None:  # type: ignore[assignment]
        size = self.main_size if size == "main" else size
        for r in self.runs.values():
            i = r.info
            if (i["model"], i["lang"], i["variant"]) == (model, lang, variant) and (
                i["method"] is None or i["size"] == size
            ):
                return r
        return None

    def variants(self) -> list[dict]:
        """One description per variant, in plan order: name, method, trainable, nll_langs, ablation."""
        seen: dict[str, dict] = {}
        for r in self.runs.values():
            i = r.info
            if i["variant"] not in seen:
                seen[i["variant"]] = {"name": i["variant"], "method": i["method"], "trainable": i.get("trainable"),
                                      "nll_langs": i.get("nll_langs"), "ablation": bool(i.get("ablation"))}
        return list(seen.values())

    def main_variants(self) -> list[str]:
        return [v["name"] for v in self.variants() if not v["ablation"]]

    def eval_keys(self, task: str) -> list[str]:
        keys: list[str] = []
        for r in self.runs.values():
            for k, t in (r.info.get("tasks") or {}).items():
                if t["task"] == task and k not in keys:
                    keys.append(k)
            for k in r.metrics:
                if k.rsplit("_", 1)[0] == task and k not in keys:
                    keys.append(k)
        return keys


def _read_json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable JSON ({e})") from None


def collect(grid_dir: str | Path) -> GridResults:
    """Every expected run of a grid directory with whatever metrics are stored for it."""
    grid_dir = Path(grid_dir)
    plan_path = grid_dir / "plan.json"
    if not plan_path.is_file():
        raise FileNotFoundError(f"{grid_dir}: no plan.json; is this a grid directory written by `clo run`?")
    plan = _read_json(plan_path)
    if not isinstance(plan, dict) or not isinstance(plan.get("runs"), list):
        raise ValueError(f"{plan_path}: field 'runs' missing or not a list")  # noqa: TRY004 - bad file content
    runs: dict[str, RunResult] = {}
    for i, info in enumerate(plan["runs"]):
        for key in ("run_id", "model", "lang", "variant", "method", "size"):
            if key not in info:
                raise ValueError(f"{plan_path}: runs[{i}]: field {key!r} missing")
        res = RunResult(info)
        rdir = grid_dir / "runs" / info["run_id"]
        for key in info.get("evals", []):
            marker = rdir / "eval" / f"{key}.done.json"
            task, _, lang = key.rpartition("_")
            # the file clo.eval.evaluate writes: <task>-<lang>.json
            stored = rdir / "eval" / key / f"{task}-{lang}.json"
            if marker.is_file():
                m = _read_json(marker)
                if not isinstance(m, dict) or not isinstance(m.get("result"), dict):
                    raise ValueError(f"{marker}: field 'result' missing or not an object")
                res.metrics[key] = m["result"]
            elif stored.is_file():
                m = _read_json(stored)
                if not isinstance(m, dict) or not isinstance(m.get("metrics"), dict):
                    raise ValueError(f"{stored}: field 'metrics' missing or not an object")
                res.metrics[key] = m["metrics"]
        train_marker = rdir / "train.done.json"
        if train_marker.is_file():
            tm = _read_json(train_marker)
            examples = ((tm or {}).get("result") or {}).get("metrics", {}).get("examples") \
                if isinstance(tm, dict) and isinstance(tm.get("result"), dict) else None
            res.trained = examples if isinstance(examples, int) else None
        if (rdir / "samples.json").is_file():
            res.samples = _read_json(rdir / "samples.json")
        failed = rdir / "failed.json"
        if failed.is_file():
            res.status, res.error = "failed", (_read_json(failed) or {}).get("error")
        elif info.get("evals") and all(k in res.metrics for k in info["evals"]):
            res.status = "done"
        elif res.metrics:
            res.status = "partial"
        runs[info["run_id"]] = res
    runs = {**_seed_aggregates(runs), **runs}
    warnings: dict[str, list[str]] = {}
    for marker in sorted((grid_dir / "data").glob("*/data.done.json")):
        m = _read_json(marker)
        ws = ((m or {}).get("result") or {}).get("warnings") if isinstance(m, dict) else None
        if isinstance(ws, list) and ws:
            warnings[marker.parent.name] = [str(w) for w in ws]
    return GridResults(grid_dir, plan, runs, warnings)


# A grid with a seeds axis: the (value, standard error) fields of each task whose cells are
# shown as mean ± SD over the seeds, and the counts that add up.
SEED_FIELDS = {
    "belebele": [("accuracy", "stderr")], "mmmlu": [("accuracy", "stderr"), ("failure_rate", None)],
    "alpacaeval": [("win_rate", "stderr"), ("lc_win_rate", None)],
    "fidelity": [("rate", "stderr"), ("echo_rate", "echo_rate_stderr")],
    "preference": [("tgt_preferred", "tgt_preferred_stderr"), ("en_preferred", "en_preferred_stderr")],
    "confusion": [("lpr", None), ("wpr", None), ("lcpr", None)],
}
SEED_COUNTS = ("wins", "losses", "ties", "failures")


def _over_seeds(task: str, ms: list[dict]) -> dict:
    """One metrics dict for the runs of several seeds: each headline value's mean over the seeds
    and, as its ``±``, their standard deviation (n − 1); win/loss/tie counts summed."""
    out = dict(ms[0])
    out["seeds"] = len(ms)
    for value, se in SEED_FIELDS.get(task, []):
        xs = [m.get(value) for m in ms]
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs):
            out[value] = None
            continue
        mean = sum(xs) / len(xs)
        out[value] = mean
        if se is not None:
            out[se] = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    for k in SEED_COUNTS:
        if all(isinstance(m.get(k), int) for m in ms):
            out[k] = sum(m[k] for m in ms)
    if all(isinstance(m.get("n"), int) for m in ms) and any(k in out for k in SEED_COUNTS):
        out["n"] = sum(m["n"] for m in ms)  # the counts' denominator
    return out


def _seed_aggregates(runs: dict[str, RunResult]) -> dict[str, RunResult]:
    """For runs of a seeds axis (run ids ``.../s<seed>``), one run per cell whose metrics are the
    seeds' mean ± SD (:func:`_over_seeds`); the tables find it before the single seeds."""
    groups: dict[str, list[RunResult]] = {}
    for r in runs.values():
        if r.info.get("seed") is not None:
            groups.setdefault(r.info["run_id"].rsplit("/s", 1)[0], []).append(r)
    out = {}
    for rid, rs in groups.items():
        info = {k: v for k, v in rs[0].info.items() if k != "seed"}
        info.update(run_id=rid, seeds=sorted(r.info["seed"] for r in rs))
        agg = RunResult(info)
        for key in rs[0].metrics:
            if all(key in r.metrics for r in rs):
                agg.metrics[key] = _over_seeds(key.rsplit("_", 1)[0], [r.metrics[key] for r in rs])
        agg.status = "done" if all(r.status == "done" for r in rs) else (
            "failed" if any(r.status == "failed" for r in rs) else "partial" if agg.metrics else "missing")
        trained = [r.trained for r in rs if r.trained is not None]
        agg.trained = trained[0] if trained and len(set(trained)) == 1 else None
        out[rid] = agg
    return out


# ---------------------------------------------------------------------------------------------
# The tables


def _label(variant: str) -> str:
    return {"sft": "SFT", "sft+dpo": "SFT+DPO", "clo": "CLO", "dpo": "DPO", "sft-eng": "SFT-eng",
            "sft-tgt": "SFT-tgt", "base": "Base"}.get(variant, variant)


def _diff(a: Cell, b: Cell) -> Cell:
    if a.value is None or b.value is None:
        return Cell()
    return Cell(a.value - b.value)


def judge_protocol(res: GridResults) -> str:
    """The caption's sentence naming the judge prompt and system prompt the win rates were judged
    with (``judge_prompt``/``system_prompt`` of the stored AlpacaEval metrics). Cells judged under
    different variants are not comparable: the sentence lists every variant found, and says when
    a result does not record its own (an evaluation written before clo recorded it)."""
    prompts, systems, unrecorded = set(), set(), 0
    for run in res.runs.values():
        for key, m in run.metrics.items():
            if key.rsplit("_", 1)[0] != "alpacaeval":
                continue
            if "judge_prompt" not in m:
                unrecorded += 1
                continue
            prompts.add(str(m["judge_prompt"]))
            systems.add(str(m.get("system_prompt", "none")))
    if not prompts and not unrecorded:
        return ""
    parts = []
    if prompts:
        several = len(prompts) > 1 or len(systems) > 1
        parts.append(("Judge prompts differ between cells: " if several else "Judge prompt: ")
                     + ", ".join(f"`{p}`" for p in sorted(prompts))
                     + "; system prompt: " + ", ".join(f"`{x}`" for x in sorted(systems)) + ".")
    if unrecorded:
        parts.append(f"{unrecorded} result(s) do not record their judge prompt.")
    return " ".join(parts)


def table1_winrates(res: GridResults) -> Table:
    """Win rates of each method against the baseline (SFT), in the target language and English."""
    base = res.baseline
    compared = [v for v in res.main_variants() if v not in (base, "base") and _has_task(res, v, "alpacaeval")]
    by_method = {v["method"]: v["name"] for v in res.variants() if not v["ablation"]}
    delta = by_method.get("clo"), by_method.get("sft+dpo")
    cols: list[str] = []
    for where in ("tgt", "en"):
        cols += [f"{_label(v)} {where}" for v in compared]
        if all(delta):
            cols.append(f"Δ {where}")
    note = "Pairwise judge, ties count half; ± one standard error. "
    if all(delta):
        note += "Δ = CLO − SFT+DPO in points. "
    protocol = judge_protocol(res)
    t = Table("table1_winrates", f"Table 1: win rate (%) against {_label(base)}", ["model", "lang"], cols,
              note=note + res.size_note() + (f" {protocol}" if protocol else ""))
    for model, lang in res.cells():
        cells: list[Cell] = []
        for where in ("tgt", "en"):
            key = f"alpacaeval_{lang if where == 'tgt' else 'en'}"
            row = {}
            for v in compared:
                r = res.find(model, lang, v)
                row[v] = r.cell(key, "win_rate") if r else Cell()
                cells.append(row[v])
            if all(delta):
                cells.append(_diff(row.get(delta[0], Cell()), row.get(delta[1], Cell())))
        t.rows.append(([model, lang], cells))
    return t


def _has_task(res: GridResults, variant: str, task: str) -> bool:
    """Whether any run of ``variant`` plans or holds an evaluation of ``task`` (a variant evaluated
    on some tasks only gets no column of gaps in the others' tables)."""
    return any(k.rsplit("_", 1)[0] == task for r in res.runs.values() if r.info["variant"] == variant
               for k in [*(r.info.get("evals") or []), *r.metrics])


def _accuracy_table(res: GridResults, task: str, name: str, title: str) -> Table:
    variants = [v for v in res.main_variants() if _has_task(res, v, task)]
    t = Table(name, title, ["model", "lang", "eval lang"], [_label(v) for v in variants],
              note=f"Accuracy (%) ± one standard error; training size {_size_label(res.main_size)}." + res.seeds_note())
    for model, lang in res.cells():
        for key in res.eval_keys(task):
            eval_lang = key.rsplit("_", 1)[1]
            if eval_lang not in (lang, "en") or not any(
                key in (r.info.get("evals") or []) or key in r.metrics
                for r in res.runs.values() if (r.info["model"], r.info["lang"]) == (model, lang)
            ):
                continue
            cells = []
            for v in variants:
                r = res.find(model, lang, v)
                cells.append(r.cell(key, "accuracy") if r else Cell())
            t.rows.append(([model, lang, eval_lang], cells))
    return t


def table2_belebele(res: GridResults) -> Table:
    return _accuracy_table(res, "belebele", "table2_belebele", "Table 2: BELEBELE accuracy (%)")


def table3_mmmlu(res: GridResults) -> Table:
    t = _accuracy_table(res, "mmmlu", "table3_mmmlu", "Table 3: MMMLU accuracy (%)")
    left = sorted({m["format_items_left_out"] for r in res.runs.values() for k, m in r.metrics.items()
                   if k.rsplit("_", 1)[0] == "mmmlu" and m.get("format_items_left_out")})
    if left:
        t.note += (f" {'/'.join(map(str, left))} questions trained on as format items (the paper's Appendix D) "
                   "are left out of the evaluation.")
    return t


def figure4_mmmlu_categories(res: GridResults) -> Table:
    """Figure 4's data: MMMLU accuracy per subject category, in the target language, per method."""
    variants = res.main_variants()
    t = Table("figure4_mmmlu_categories", "Figure 4: MMMLU accuracy (%) by subject category",
              ["model", "lang", "category"], [_label(v) for v in variants],
              note="Target-language MMMLU; ± one standard error. Categories: MMLU's four (Hendrycks et al., "
                   "2021); the paper's Figure 4 groups the 57 subjects into 24 groups it does not list, so clo "
                   "keeps MMLU's own grouping (every subject's accuracy is in the evaluation's result file). "
                   f"Training size {_size_label(res.main_size)}.")
    for model, lang in res.cells():
        key = f"mmmlu_{lang}"
        runs = {v: res.find(model, lang, v) for v in variants}
        per = {v: ((r.metrics.get(key) or {}).get("per_category") or {}) if r else {} for v, r in runs.items()}
        for cat in sorted({c for p in per.values() for c in p}):
            cells = []
            for v in variants:
                c = per[v].get(cat)
                cells.append(Cell(float(c["accuracy"]), None if c.get("stderr") is None else float(c["stderr"]))
                             if isinstance(c, dict) and c.get("accuracy") is not None else Cell())
            t.rows.append(([model, lang, cat], cells))
    return t


def _ablation_metrics(res: GridResults, lang: str) -> list[tuple[str, str, str]]:
    """(row label, eval key, metric) of the numbers an ablation table compares."""
    out = []
    for task, metric, label in (("alpacaeval", "win_rate", "win rate vs " + _label(res.baseline)),
                                ("belebele", "accuracy", "BELEBELE"), ("mmmlu", "accuracy", "MMMLU"),
                                ("fidelity", "rate", "response in language")):
        for key in res.eval_keys(task):
            el = key.rsplit("_", 1)[1]
            if el in (lang, "en"):
                out.append((f"{label} ({el})", key, metric))
    return out


def _ablation_table(res: GridResults, name: str, title: str, select: Callable[[dict], str | None]) -> Table:
    groups: dict[str, str] = {}  # column label -> variant
    for v in res.variants():
        if v["method"] == "clo":
            label = select(v)
            if label is not None and label not in groups:
                groups[label] = v["name"]
    if len(groups) < 2:
        groups = {}  # one variant compares nothing: the table is left out ("Not in this report")
    t = Table(name, title, ["model", "lang", "metric"], [f"{lab} ({var})" for lab, var in groups.items()],
              note=f"CLO variants; % ± one standard error; training size {_size_label(res.main_size)}.")
    for model, lang in res.cells():
        for label, key, metric in _ablation_metrics(res, lang):
            cells = []
            for var in groups.values():
                r = res.find(model, lang, var)
                cells.append(r.cell(key, metric) if r else Cell())
            t.rows.append(([model, lang, label], cells))
    return t


def table4_trainable(res: GridResults) -> Table:
    return _ablation_table(
        res, "table4_trainable", "Table 4: ablation, trained parameters (attention only vs full)",
        lambda v: v["trainable"] if list(v["nll_langs"] or []) == ["tgt"] else None,
    )


def table4_head_to_head(res: GridResults) -> Table:
    """Table 4 as the paper gives it: CLO variants judged against another CLO variant (the grid's
    baseline, e.g. ``configs/table4.yaml``), the share of items each wins and loses."""
    info = {v["name"]: v for v in res.variants()}
    base = res.baseline
    others = [n for n, v in info.items() if info.get(base, {}).get("method") == "clo" and v["method"] == "clo"
              and n != base]
    cols = [f"{_label(v)} {what} {where}" for where in ("tgt", "en") for v in others for what in ("win", "lose")]
    t = Table("table4_head_to_head", f"Table 4 (head to head): CLO variants against {base}", ["model", "lang"], cols,
              note=f"Share (%) of the judged items each variant's answer wins and loses against {base}'s answer "
                   "to the same instruction (the rest are ties; failed judgments are not counted). "
                   + res.size_note())
    for model, lang in res.cells():
        cells: list[Cell] = []
        for where in ("tgt", "en"):
            key = f"alpacaeval_{lang if where == 'tgt' else 'en'}"
            for v in others:
                r = res.find(model, lang, v)
                m = (r.metrics.get(key) if r else None) or {}
                n = m.get("n")
                for what in ("wins", "losses"):
                    ok = isinstance(n, int) and n > 0 and isinstance(m.get(what), int)
                    cells.append(Cell(m[what] / n) if ok else Cell())
        t.rows.append(([model, lang], cells))
    return t


def table9_judge_prompts(res: GridResults) -> Table:
    """Table 9: the same answers judged with two judge prompts (the AlpacaEval task's
    ``also_judge_with``), the win rate against the baseline under each."""
    t = Table("table9_judge_prompts", f"Table 9: win rate (%) against {_label(res.baseline)} under two judge prompts",
              ["model", "lang", "eval lang", "method"], ["prompt 1", "win rate 1", "prompt 2", "win rate 2"],
              numeric=False,
              note="The same answers of each run and of the baseline, judged once with eval.judge.prompt (1) and "
                   "once with the job's also_judge_with (2); ± one standard error. " + res.size_note())
    for model, lang in res.cells():
        for key in res.eval_keys("alpacaeval"):
            if key.rsplit("_", 1)[1] not in (lang, "en"):
                continue
            for v in res.main_variants():
                r = res.find(model, lang, v)
                m = (r.metrics.get(key) if r else None) or {}
                for name, other in (m.get("also_judged") or {}).items():
                    first = str(m.get("judge_prompt", "")).split("@")[0] or GAP
                    t.rows.append(([model, lang, key.rsplit("_", 1)[1], _label(v)], [
                        Cell(text=first), r.cell(key, "win_rate"), Cell(text=name),
                        _get(other, "win_rate", "stderr")]))
    return t


def table5_nll_langs(res: GridResults) -> Table:
    return _ablation_table(
        res, "table5_nll_langs", "Table 5: ablation, languages of the NLL term (target vs target + English)",
        lambda v: "NLL " + "+".join(v["nll_langs"] or []) if v["trainable"] == "attention" else None,
    )


def fidelity_table(res: GridResults) -> Table:
    variants = [v for v in res.main_variants() if _has_task(res, v, "fidelity") or _has_task(res, v, "confusion")]
    t = Table("fidelity", "Language fidelity (%)", ["model", "lang", "metric"], [_label(v) for v in variants],
              note="Response rate: responses whose detected language is the prompt's. Echoes: responses that "
                   "repeat the prompt (in its language without answering it); echoes excluded: the response rate "
                   "among the other responses. LPR/WPR: line- and word-level pass rates of the Language "
                   "Confusion Benchmark.")
    for model, lang in res.cells():
        for task, metric, label in (("fidelity", "rate", "response rate"), ("fidelity", "echo_rate", "echoes"),
                                    ("fidelity", "rate_excluding_echoes", "response rate, echoes excluded"),
                                    ("confusion", "lpr", "LPR"), ("confusion", "wpr", "WPR")):
            for key in res.eval_keys(task):
                el = key.rsplit("_", 1)[1]
                if el not in (lang, "en"):
                    continue
                cells = []
                for v in variants:
                    r = res.find(model, lang, v)
                    cells.append(r.cell(key, metric) if r else Cell())
                if metric in ("echo_rate", "rate_excluding_echoes") and all(c.missing for c in cells):
                    continue  # results written before clo counted echoes
                t.rows.append(([model, lang, f"{label} ({el})"], cells))
    return t


#: The preference table's rows: (metric, label, per-item record field).
PREFERENCE_ROWS = (
    ("tgt_preferred", "{lang} answer preferred, {lang} prompt (%)"),
    ("en_preferred", "en answer preferred, en prompt (%)"),
    ("margin_tgt", "margin {lang} − en answer, {lang} prompt (nats/token)"),
    ("margin_en", "margin en − {lang} answer, en prompt (nats/token)"),
    ("nll_tgt", "NLL of the {lang} answer to the {lang} prompt (nats/token)"),
    ("nll_en", "NLL of the en answer to the en prompt (nats/token)"),
)


def _preference_pairs(res: GridResults, variants: list[str]) -> list[tuple[str, str]]:
    """(a, b) pairs compared item by item: each method against the baseline, then against base."""
    base = res.baseline
    pairs = [(v, base) for v in variants if v not in (base, "base")] if base in variants else []
    if "base" in variants:
        pairs += [(v, "base") for v in variants if v != "base"]
    return pairs


def item_values(res: GridResults, run: RunResult | None, key: str) -> dict[str, dict] | None:
    """``{item id: record}`` of a finished evaluation's result file, or None when there is none."""
    if run is None or key not in run.metrics:
        return None
    task, _, lang = key.rpartition("_")
    path = res.grid_dir / "runs" / run.info["run_id"] / "eval" / key / f"{task}-{lang}.json"
    if not path.is_file():
        return None
    doc = _read_json(path)
    recs = doc.get("records") if isinstance(doc, dict) else None
    if not isinstance(recs, list):
        raise ValueError(f"{path}: field 'records' missing or not a list")  # noqa: TRY004 - bad file content
    return {str(r["id"]): r for r in recs if isinstance(r, dict) and "id" in r}


def preference_table(res: GridResults) -> Table:
    """Per-token preferences and NLL on held-out quadruples, and paired differences between models."""
    from clo.eval.paired import compare

    variants = res.main_variants()
    pairs = _preference_pairs(res, variants)
    t = Table("preference", "Language preference on held-out parallel quadruples",
              ["model", "lang", "metric"],
              [_label(v) for v in variants] + [f"{_label(a)} − {_label(b)}" for a, b in pairs],
              note="Per held-out record (x_en, y_en, x_tgt, y_tgt), the per-token mean log-prob of each answer "
                   "under each prompt (deterministic, no sampling). Preferred: the share of items whose answer in "
                   "the prompt's language is the more likely one per token. Margin: the mean of that difference; "
                   "NLL: per token. ± one standard error; a difference A − B is taken item by item on the items "
                   "both models scored, ± its paired standard error (percentage points for shares).")
    for model, lang in res.cells():
        key = f"preference_{lang}"
        if key not in res.eval_keys("preference"):
            continue
        runs = {v: res.find(model, lang, v) for v in variants}
        items = {v: item_values(res, r, key) for v, r in runs.items()}
        for metric, label in PREFERENCE_ROWS:
            cells = [r.cell(key, metric) if r else Cell() for r in runs.values()]
            pct = metric.endswith("_preferred")
            for a, b in pairs:
                if items[a] is None or items[b] is None:
                    cells.append(Cell())
                    continue
                d = compare({i: float(r[metric]) for i, r in items[a].items()},
                            {i: float(r[metric]) for i, r in items[b].items()})
                cells.append(Cell(d["mean"], d["se"], pct=pct, n=d["n"]) if d["n"] else Cell())
            t.rows.append(([model, lang, label.format(lang=lang)], cells))
    return t


def sign_test_p(wins: int, losses: int) -> float | None:
    """Exact two-sided sign test of ``wins`` against ``losses`` (ties already dropped): twice the
    smaller tail of Binomial(wins + losses, 1/2), at most 1; None without a decided item. On the
    discordant items of two classifiers it is the exact McNemar test."""
    n = wins + losses
    if n == 0:
        return None
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2.0 * tail)


def _p_text(p: float | None) -> str:
    if p is None:
        return GAP
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _interval(lo: float, hi: float) -> str:
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def _paired_row(a: dict[str, float], b: dict[str, float]) -> list[Cell] | None:
    """Difference (points), its paired normal 95 % interval and the exact sign test on the items
    where ``a`` and ``b`` differ, over the items both hold."""
    from clo.eval.paired import align, paired_difference

    _, x, y = align(a, b)
    if not x:
        return None
    d = paired_difference(x, y)
    up, down = sum(1 for u, v in zip(x, y) if u > v), sum(1 for u, v in zip(x, y) if u < v)
    return [Cell(d["mean"]), Cell(text=_interval(*d["ci95"])), Cell(text=f"{up} vs {down} of {len(x)}"),
            Cell(text=_p_text(sign_test_p(up, down)))]


def significance_table(res: GridResults) -> Table:
    """Every method against the baseline and CLO against SFT+DPO, on the same items: win rates
    (sign test of wins against losses) and accuracies (exact McNemar test), with 95 % intervals."""
    t = Table("significance", "Significance of the differences (same items)", ["model", "lang", "task", "comparison"],
              ["difference", "95 % interval", "items decided", "p"], numeric=False,
              note="Win rates: a method against the baseline it was judged with: its win rate − 50 % (points), "
                   "the normal 95 % interval of the win rate − 50, and the exact two-sided sign test of its wins "
                   "against its losses (ties dropped). CLO − SFT+DPO and accuracy differences: paired over the "
                   "items both runs scored: the mean difference of the item scores (points), its paired normal "
                   "95 % interval, and the exact two-sided sign test on the items where the two differ (for "
                   "accuracies the exact McNemar test). An ablation (Tables 4 and 5) is also compared, the same "
                   "way, with the main CLO run.")
    base = res.baseline
    # every trained variant, the ablations included
    compared = [v["name"] for v in res.variants() if v["method"] is not None and v["name"] not in (base, "base")]
    by_method = {v["method"]: v["name"] for v in res.variants() if not v["ablation"]}
    clo, dpo = by_method.get("clo"), by_method.get("sft+dpo")
    # (a, b) pairs compared item by item: CLO − SFT+DPO, and each ablation − the main CLO
    pairs = [(clo, dpo)] + [(v["name"], clo) for v in res.variants() if v["ablation"] and v["method"] == "clo"
                            and clo is not None]
    for model, lang in res.cells():
        for key in [k for k in res.eval_keys("alpacaeval") if k.rsplit("_", 1)[1] in (lang, "en")]:
            scores = {}
            for v in compared:
                r = res.find(model, lang, v)
                items = item_values(res, r, key)
                if items is None:
                    continue
                scores[v] = {i: rec.get("score") for i, rec in items.items()}
                vals = [x for x in scores[v].values() if x is not None]
                wins, losses = sum(1 for x in vals if x == 1.0), sum(1 for x in vals if x == 0.0)
                m = r.metrics.get(key, {})
                wr, se = m.get("win_rate"), m.get("stderr")
                if wr is None:
                    continue
                ci = Cell(text=_interval(wr - 0.5 - Z95 * se, wr - 0.5 + Z95 * se)) if se is not None else Cell()
                t.rows.append(([model, lang, key, f"{_label(v)} vs {_label(base)}"],
                               [Cell(wr - 0.5), ci, Cell(text=f"{wins} vs {losses} of {len(vals)}"),
                                Cell(text=_p_text(sign_test_p(wins, losses)))]))
            for a, b in pairs:
                if a in scores and b in scores:
                    row = _paired_row(scores[a], scores[b])
                    if row:
                        t.rows.append(([model, lang, key, f"{_label(a)} − {_label(b)}"], row))
        for task in ("belebele", "mmmlu"):
            for key in [k for k in res.eval_keys(task) if k.rsplit("_", 1)[1] in (lang, "en")]:
                base_items = item_values(res, res.find(model, lang, base), key)
                if base_items is None:
                    continue
                b = {i: float(rec["correct"]) for i, rec in base_items.items() if "correct" in rec}
                for v in compared:
                    items = item_values(res, res.find(model, lang, v), key)
                    if items is None:
                        continue
                    row = _paired_row({i: float(rec["correct"]) for i, rec in items.items() if "correct" in rec}, b)
                    if row:
                        t.rows.append(([model, lang, key, f"{_label(v)} − {_label(base)}"], row))
                for a, ref in pairs[1:]:  # the ablations against the main CLO
                    ia, ir = (item_values(res, res.find(model, lang, x), key) for x in (a, ref))
                    if ia is None or ir is None:
                        continue
                    row = _paired_row({i: float(r["correct"]) for i, r in ia.items() if "correct" in r},
                                      {i: float(r["correct"]) for i, r in ir.items() if "correct" in r})
                    if row:
                        t.rows.append(([model, lang, key, f"{_label(a)} − {_label(ref)}"], row))
    return t


def runs_table(res: GridResults) -> Table:
    warn = [f"{lang}: {w}" for lang, ws in res.data_warnings.items() for w in ws]
    t = Table("runs", "Runs", ["run"], ["status", "trained on", "evaluations", "error"], numeric=False,
              note="trained on: the examples (quadruples) the run's training read; a run's name gives the size "
                   "asked for." + (" Data warnings: " + "; ".join(warn) + "." if warn else ""))
    for rid, r in res.runs.items():
        done = sum(1 for k in r.info.get("evals", []) if k in r.metrics)
        t.rows.append(([rid], [Cell(text=r.status), Cell() if r.trained is None else Cell(text=str(r.trained)),
                               Cell(text=f"{done}/{len(r.info.get('evals', []))}"), Cell(text=r.error or "")]))
    return t


def samples_table(res: GridResults) -> Table:
    variants = res.main_variants()
    t = Table("samples", "Answers side by side (greedy)", ["model", "lang", "prompt"],
              [_label(v) for v in variants], numeric=False)
    for model, lang in res.cells():
        prompts: list[str] = []
        answers: dict[str, dict[str, str]] = {}
        for v in variants:
            r = res.find(model, lang, v)
            for s in (r.samples or []) if r else []:
                if s["prompt"] not in prompts:
                    prompts.append(s["prompt"])
                answers.setdefault(v, {})[s["prompt"]] = s["answer"]
        for p in prompts:
            t.rows.append(([model, lang, p], [
                Cell(text=answers[v][p]) if p in answers.get(v, {}) else Cell() for v in variants]))
    return t


def winrate_vs_size(res: GridResults) -> Table:
    """Figure 3's data: win rate (target language) of every compared variant at every size."""
    largest = res.plan.get("baseline_size") == "largest"
    # Against the baseline at the largest size (the paper's Figures 3 and 5) the baseline's own
    # smaller sizes are compared too: its curve, and 50 % at the size it is compared with.
    compared = [v["name"] for v in res.variants() if v["method"] is not None and (largest or v["name"] != res.baseline)]
    against = f"{_label(res.baseline)} at size {_size_label(res.main_size)}" if largest else \
        f"{_label(res.baseline)} of the same size"
    note = f"Every size is judged against {against}; the dashed line is 50 %."
    t = Table("figure3_winrate_vs_size", f"Figure 3: win rate (%) against {_label(res.baseline)} by data size",
              ["model", "lang", "size"], [_label(v) for v in compared],
              note=" ".join(x for x in (note, judge_protocol(res), res.seeds_note().strip()) if x))
    for model, lang in res.cells():
        key = f"alpacaeval_{lang}"
        for size in res.sizes:
            cells = []
            for v in compared:
                r = res.find(model, lang, v, size)
                cells.append(r.cell(key, "win_rate") if r else Cell())
            t.rows.append(([model, lang, _size_label(size)], cells))
    return t


def _size_label(size: int | None) -> str:
    return "all" if size is None else str(size)


#: name -> builder; report order
#: The paper's tables (and the run overview), in report order; clo.report.TABLES adds the others.
PAPER_TABLES: dict[str, Callable[[GridResults], Table]] = {
    "table1_winrates": table1_winrates,
    "table2_belebele": table2_belebele,
    "table3_mmmlu": table3_mmmlu,
    "figure4_mmmlu_categories": figure4_mmmlu_categories,
    "table4_trainable": table4_trainable,
    "table4_head_to_head": table4_head_to_head,
    "table5_nll_langs": table5_nll_langs,
    "table9_judge_prompts": table9_judge_prompts,
    "fidelity": fidelity_table,
    "preference": preference_table,
    "figure3_winrate_vs_size": winrate_vs_size,
    "samples": samples_table,
    "significance": significance_table,
    "runs": runs_table,
}


#: What fills each table, and the command that runs it where a grid does not: table -> (tasks, how).
RUNS_IT: dict[str, tuple[tuple[str, ...], str]] = {
    "table1_winrates": (("alpacaeval",), ("a judged win rate: needs a judge model (`eval.judge`, its key in "
                        "`$OPENAI_API_KEY` by default); `clo run configs/paper.yaml`")),
    "table2_belebele": (("belebele",), "`clo run configs/paper.yaml` (eval job `{task: belebele}`)"),
    "table3_mmmlu": (("mmmlu",), "`clo run configs/paper.yaml` (eval job `{task: mmmlu}`)"),
    "figure4_mmmlu_categories": (("mmmlu",), "`clo run configs/paper.yaml` (eval job `{task: mmmlu}`)"),
    "table4_trainable": ((), "two CLO variants that differ in trained parameters: `clo run configs/ablations.yaml`"),
    "table4_head_to_head": ((), "CLO variants judged against a CLO baseline: `clo run configs/table4.yaml`"),
    "table9_judge_prompts": ((), "an AlpacaEval job with `opts: {also_judge_with: PROMPT}`: `clo run configs/table9.yaml`"),
    "table5_nll_langs": ((), "two CLO variants that differ in NLL languages: `clo run configs/ablations.yaml`"),
    "fidelity": (("fidelity", "confusion"), "eval job `{task: fidelity}` or `{task: confusion}`"),
    "preference": (("preference",), "eval job `{task: preference}` (held-out records: the grid's validation split)"),
    "figure3_winrate_vs_size": (("alpacaeval",), ("win rates at several training sizes, with a judge: "
                                "`clo run configs/sizes.yaml`")),
    "samples": ((), "grid key `samples: [prompt, ...]`"),
    "significance": ((), "per-item results of AlpacaEval, BELEBELE or MMMLU for a method and the baseline"),
    "beyond_cl_losses": ((), "CLO variants with different `train.cl_loss`: `clo run configs/beyond.yaml`"),
    "beyond_multilingual": ((), ("a run with several target languages (`langs: [[sw, yo]]`): "
                            "`clo run configs/beyond.yaml`")),
}


def not_shown(res: GridResults, table: Table) -> str | None:
    """Why ``table`` is left out of a report (every cell a gap), or None when it is shown: planned
    in this grid but not finished yet, or not run by this grid at all (with the command that runs it)."""
    if not table.empty or table.name == "runs":
        return None
    tasks, how = RUNS_IT.get(table.name, ((), ""))
    planned = any(t.get("task") in tasks for r in res.runs.values() for t in (r.info.get("tasks") or {}).values())
    if table.name == "figure3_winrate_vs_size":
        planned = planned and len(res.sizes) > 1
    if planned:
        return "planned in this grid, no result yet (see Runs)"
    return f"not run by this grid; {how}" if how else "not run by this grid"
