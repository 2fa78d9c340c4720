"""Running a grid: data -> train -> eval -> report, each stage cached behind a done-marker.

Layout of a grid directory (``GridConfig.output_dir``)::

    grid.yaml                      the resolved grid config
    plan.json                      every run and evaluation the grid expects (reports show gaps)
    status.json                    what the last run of the grid did
    data/<lang>/                   the cross-lingual dataset, built once per language and shared
                                   (a multilingual entry [sw, yo]: data/sw+yo/, runs/<model>/sw+yo/...)
        train.jsonl validation.jsonl subsets/train_<n>.jsonl   data.done.json
    runs/<model>/<lang>/base/      the untrained model (evaluation only)
    runs/<model>/<lang>/<variant>/n<size|all>/
        run.json config.yaml log.txt
        train/                     checkpoints (the train stage's output directory)   train.done.json
        eval/<task>_<lang>/<task>.json|.md                                            eval/<task>_<lang>.done.json
        samples.json                                                                  samples.done.json
        failed.json                the last error of this run, removed once it succeeds
    report/                        tables (Markdown, CSV), figures (PNG), report.json  report.done.json
    slurm/<job id>/                submitit's files when the stages run as Slurm jobs (clo.experiments.launchers)

(next to each ``<stage>.done.json``, a ``<stage>.started.json`` while that stage is running or
after it died: it records which inputs the partial output belongs to.)

The stages and what each reads are listed once, by :func:`clo.experiments.graph.grid_stages`;
:func:`run_grid` walks that list. Each stage's marker fingerprints its inputs, so changing the
data, a setting or a model redoes exactly what depends on it, from a clean output
(:func:`clo.experiments.stages.run_stage`). The stage functions come from a
:class:`StageFunctions` (by default the real ``clo.data``, ``clo.train``, ``clo.eval`` and
``clo.report``); tests pass their own.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from clo.config import Config, dump_config
from clo.experiments.config import GridConfig, dump_grid, expand
from clo.experiments.graph import Stage, grid_stages, plan
from clo.experiments.stages import (
    StageNotDone,
    check_marker_format,
    lookup_stage,
    run_stage,
)
from clo.io import atomic_write, write_json

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Stage functions


def _data_build(cfg: Config, out_dir: Path) -> dict:
    from clo.data.build import build_dataset

    # The grid's marker decides when a build's inputs changed (it clears the directory then);
    # the build's own record of another configuration is no reason to refuse here.
    return build_dataset(cfg, out_dir, overwrite=True)


def prebuilt_dataset(path: Path, cfg: Config, out_dir: Path) -> dict:
    """Split a prebuilt cross-lingual JSONL exactly as the data build splits translated records.

    Validation is :func:`clo.data.build.split_indices` (a ``data.seed`` sample of
    ``round(n * val_fraction)`` records), training the rest in file order, and the nested subsets
    are :func:`clo.data.build.subset_sizes` of ``data.subsets``.
    """
    from clo.data.build import split_indices, subset_sizes
    from clo.data.records import (
        RecordError,
        read_multilingual,
        read_records,
        write_multilingual,
        write_records,
    )

    if len(cfg.langs) > 1:  # multilingual records, and one language's validation records each
        records = read_multilingual(path, cfg.langs)
        val_idx = set(split_indices(len(records), cfg.data.val_fraction, cfg.data.seed))
        train = [r for i, r in enumerate(records) if i not in val_idx]
        val = [r for i, r in enumerate(records) if i in val_idx]
        if not train:
            raise ValueError(f"{path}: {len(records)} records leave nothing to train on after the validation split")
        write_multilingual(train, out_dir / "train.jsonl")
        write_multilingual(val, out_dir / "validation.jsonl")
        for code in cfg.langs:
            write_records([r.view(code) for r in val], out_dir / f"validation_{code}.jsonl")
        for n in subset_sizes(cfg.data.subsets, len(train)):
            write_multilingual(train[:n], out_dir / "subsets" / f"train_{n}.jsonl")
        return {"source": str(path), "train": len(train), "validation": len(val), "langs": cfg.langs}
    records = read_records(path)
    for i, r in enumerate(records, 1):
        if r.tgt_lang != cfg.lang:
            raise RecordError(path, i, "tgt_lang", f"is {r.tgt_lang!r}, the grid expects {cfg.lang!r}")
    val_idx = set(split_indices(len(records), cfg.data.val_fraction, cfg.data.seed))
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    if not train:
        raise ValueError(f"{path}: {len(records)} records leave nothing to train on after the validation split")
    out_dir.mkdir(parents=True, exist_ok=True)
    from clo.data import format_items

    fmt = format_items.records(cfg)  # Appendix D's MMMLU format items, as the data build adds them
    write_records(train + fmt, out_dir / "train.jsonl")
    write_records(val, out_dir / "validation.jsonl")
    for n in subset_sizes(cfg.data.subsets, len(train)):
        write_records(train[:n] + fmt, out_dir / "subsets" / f"train_{n}.jsonl")
    return {"source": str(path), "train": len(train), "validation": len(val),
            "mmmlu_format_items": [r.meta["mmmlu_row"] for r in fmt]}


def _train(cfg: Config, train_path: Path, val_path: Path, out_dir: Path) -> dict:
    from clo.train import train

    _MODELS.clear()  # an evaluated model must not sit in (GPU) memory while the next one trains
    res = train(cfg, train_path, val_path, out_dir)
    return {"checkpoint": str(res.best_checkpoint), "metrics": res.metrics}


class _ModelCache:
    """The last loaded (model, tokenizer): a run's evaluations share one load."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: Any = None

    def get(self, spec: str, cfg: Config):
        from clo.models import load_model

        key = (spec, cfg.train.dtype)
        if self.key != key:
            self.value = None  # free the previous model before loading the next
            self.value = load_model(spec, dtype=cfg.train.dtype)
            self.key = key
        return self.value

    def clear(self) -> None:
        self.key = self.value = None
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


_MODELS = _ModelCache()


def _evaluate(task: str, model: str, cfg: Config, out_dir: Path, opts: dict) -> dict:
    from clo.eval import evaluate
    from clo.eval.generation import resolve_backend

    # The grid's marker decides when an evaluation's inputs changed (it clears its outputs then);
    # a cache of other settings left behind is started over, not refused.
    if resolve_backend(cfg.eval.backend) == "vllm":  # eval.backend auto: vLLM on a CUDA machine that has it
        # vLLM loads the checkpoint itself and claims a share of the GPU: hand it the spec, and
        # free the transformers copy another stage may have left in memory.
        _MODELS.clear()
        return evaluate(task, model, cfg, out_dir, overwrite=True, **opts)
    return evaluate(task, _MODELS.get(model, cfg), cfg, out_dir, overwrite=True, **opts)


def _samples(model: str, cfg: Config, prompts: list[str]) -> list[str]:
    from clo.eval.generation import generate

    m, tok = _MODELS.get(model, cfg)
    # Greedy, so that the side-by-side answers are reproducible and comparable across models.
    return list(generate(m, tok, prompts, max_new_tokens=cfg.eval.max_new_tokens, temperature=0.0,
                         top_p=1.0, seed=cfg.eval.seed))


def translate_instructions(cfg: Config, lang: str, out_path: Path, instructions_file: str | None = None) -> dict:
    """The AlpacaEval instructions in ``lang``, translated once per grid with ``eval.translator`` (else
    ``data.translator``).

    Every run of a language is then judged on the same prompts, and the translation is not
    repeated per run. Only the first ``cfg.eval.limit`` instructions (all when None), the ones an
    evaluation with ``cfg`` uses; the grid passes the largest limit of its jobs. Writes
    ``[{"instruction": translated, "instruction_en": original}, ...]``.
    """
    from clo.data.translators import translate_texts
    from clo.eval.alpacaeval import eval_translator, load_instructions

    rows = load_instructions(Path(instructions_file) if instructions_file else None,
                             Path(cfg.eval.data_dir) if cfg.eval.data_dir else None)[:cfg.eval.limit]
    english = [r["instruction"] for r in rows]
    out = translate_texts(english, "en", lang, eval_translator(cfg), out_path.with_suffix(".sqlite"))
    write_json(out_path, [{"instruction": t, "instruction_en": e} for t, e in zip(out, english)])
    return {"n": len(out), "path": str(out_path)}


def _report(grid_dir: Path) -> dict:
    from clo.report import write_report

    return write_report(grid_dir)


@dataclass
class StageFunctions:
    """The side effects of a grid, one field per stage (the real modules by default)."""

    build_data: Callable[[Config, Path], dict] = _data_build
    prebuilt: Callable[[Path, Config, Path], dict] = prebuilt_dataset
    train: Callable[[Config, Path, Path, Path], dict] = _train
    evaluate: Callable[[str, str, Config, Path, dict], dict] = _evaluate
    samples: Callable[[str, Config, list[str]], list[str]] = _samples
    translate_instructions: Callable[..., dict] = translate_instructions
    report: Callable[[Path], dict] = _report


# ---------------------------------------------------------------------------------------------
# Running the stages


@dataclass
class GridResult:
    """What one execution of a grid's stages did (and, while it runs, what the stages read)."""

    grid_dir: Path
    ran: list[str] = field(default_factory=list)  # stage names that ran (not skipped)
    skipped: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # run id or stage -> error
    # With ``only``: stages left to other jobs that were done (looked up), and those that were not
    # (run id or stage -> why), so what depended on them did not run here.
    looked_up: list[str] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)
    report: dict | None = None
    seconds: float = 0.0
    stages: list[Stage] = field(default_factory=list, repr=False)
    done: dict[str, tuple[Any, str]] = field(default_factory=dict, repr=False)  # name -> (result, fingerprint)

    @property
    def ok(self) -> bool:
        return not self.failures


class _RunLog:
    """Copies log records to the run's log.txt while its stages run."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: no log file (a look-up that writes nothing)

    def __enter__(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self.handler)

    def __exit__(self, *exc) -> None:
        if self.path is None:
            return
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


def run_grid(
    grid: GridConfig,
    stages: StageFunctions | None = None,
    *,
    fail_fast: bool = False,
    progress: bool = True,
    only: Callable[[str], bool] | None = None,
    stage_runner: Callable[..., tuple[Any, str, bool]] = run_stage,
    lookup_only: bool = False,
) -> GridResult:
    """Run (or resume) every stage of ``grid``; finished stages are skipped.

    A failing stage is logged to its run's ``log.txt`` and ``failed.json``, the run's later stages
    are skipped, and the grid goes on with what does not depend on it (``fail_fast`` re-raises
    instead); the report is written at the end either way, with the missing results as gaps.

    ``only`` (a predicate on stage names such as ``train/<run id>``) runs just those stages, as
    one job of a launcher does (:mod:`clo.experiments.launchers`): every other stage is looked up
    by its done-marker (the same fingerprints), and what depends on one that is not done is
    recorded in ``pending``, not as a failure. ``stage_runner`` replaces
    :func:`~clo.experiments.stages.run_stage` (a training job's worker nodes follow the first
    node's decision instead of writing markers). ``lookup_only``: run nothing and write nothing,
    only say which stages are done (``looked_up``).
    """
    t_start = time.perf_counter()
    runs = expand(grid)
    result = GridResult(Path(grid.output_dir), stages=grid_stages(grid, runs))
    check_marker_format(s.marker for s in result.stages)
    if lookup_only:
        only, progress = (lambda name: False), False
    elif only is None:  # a launcher writes them once, before its jobs start
        write_grid_files(grid, plan(grid, runs))
    with tqdm(total=len(result.stages), desc=f"grid {grid.name}", unit="stage", disable=not progress) as bar:
        _Execution(result, stages or StageFunctions(), only, stage_runner, lookup_only, fail_fast, bar).run()
    _MODELS.clear()
    result.seconds = time.perf_counter() - t_start
    if not lookup_only and (only is None or only("report")):
        write_json(result.grid_dir / "status.json", {
            "ok": result.ok and not result.pending, "failures": {**result.pending, **result.failures},
            "ran": result.ran, "skipped": result.skipped + result.looked_up, "seconds": round(result.seconds, 1),
        })
    return result


@dataclass
class _Execution:
    """The loop over a grid's stages: each runs (or is skipped, or looked up) once the stages it
    reads are done; a failure stops its run's later stages and what depends on it."""

    result: GridResult
    functions: StageFunctions
    only: Callable[[str], bool] | None
    runner: Callable[..., tuple[Any, str, bool]]
    lookup_only: bool
    fail_fast: bool
    bar: Any
    missing: dict[str, str] = field(default_factory=dict)  # stage not done here -> "failed" or "pending"
    started_runs: set[str] = field(default_factory=set)
    by_name: dict[str, Stage] = field(default_factory=dict)

    def run(self) -> None:
        self.by_name = {s.name: s for s in self.result.stages}
        last = {s.run.run_id: i for i, s in enumerate(self.result.stages) if s.run and s.key == s.run.run_id}
        for i, st in enumerate(self.result.stages):
            self.bar.set_postfix_str(st.name, refresh=False)
            self.step(st)
            self.bar.update(1)
            run_id = st.run.run_id if st.run else None
            if run_id and last.get(run_id) == i and not self.lookup_only and run_id not in self.result.failures \
                    and run_id not in self.result.pending:
                (self.result.grid_dir / "runs" / run_id / "failed.json").unlink(missing_ok=True)

    def step(self, st: Stage) -> None:
        res = self.result
        failed = [d for d in st.deps if self.missing.get(d) == "failed"]
        if st.key in res.failures or failed or any(d in self.missing for d in st.deps):
            self.missing[st.name] = "failed" if st.key in res.failures or failed else "pending"
            # A comparison without its baseline's training, answers or instructions says so (a
            # run's own failures and its language's data are recorded where they happened).
            other = [d for d in failed if self.by_name[d].key != st.key and self.by_name[d].kind != "data"]
            if other and st.kind == "pairwise" and st.key not in res.failures:
                self.fail(st, RuntimeError(f"{st.job.task}: {', '.join(other)} did not finish"))
            return
        rdir = res.grid_dir / "runs" / st.run.run_id if st.run and st.key == st.run.run_id else None
        if rdir is not None and not self.lookup_only and st.run.run_id not in self.started_runs:
            self.started_runs.add(st.run.run_id)
            write_json(rdir / "run.json", st.run.describe())
            atomic_write(rdir / "config.yaml", dump_config(st.run.config))
        with _RunLog(None if self.lookup_only or rdir is None else rdir / "log.txt"):
            try:
                if self.only is not None and not self.only(st.name):
                    out, fp = lookup_stage(st.name, st.marker, st.inputs(res), ignore=st.ignore())
                    res.looked_up.append(st.name)
                else:
                    out, fp, ran = self.runner(st.name, st.marker, st.inputs(res), lambda: st.call(self.functions, res),
                                               clear=st.clear, keep=st.keep, ignore=st.ignore())
                    (res.ran if ran else res.skipped).append(st.name)
                    if st.after is not None:
                        st.after(res, out)
            except Exception as e:  # noqa: BLE001 - recorded in failed.json, the grid goes on
                self.missing[st.name] = "pending" if isinstance(e, StageNotDone) else "failed"
                self.fail(st, e)
                return
        res.done[st.name] = (out, fp)
        if st.kind == "report":
            res.report = out

    def fail(self, st: Stage, err: BaseException) -> None:
        res = self.result
        if isinstance(err, StageNotDone):  # another job's stage: nothing failed here
            res.pending[st.key] = str(err)
            log.debug("%s: waits for %s", st.key, err)
            return
        msg = f"{type(err).__name__}: {err}"
        res.failures[st.key] = msg
        log.error("%s failed: %s", st.key, msg)
        if st.run is not None and st.key == st.run.run_id and not self.lookup_only:
            write_json(res.grid_dir / "runs" / st.key / "failed.json",
                       {"error": msg, "traceback": traceback.format_exc()})
        if self.fail_fast:
            raise err


def done_stages(grid: GridConfig) -> frozenset[str]:
    """The stages whose done-markers match their inputs (nothing is run or written)."""
    if not Path(grid.output_dir).is_dir():
        return frozenset()
    return frozenset(run_grid(grid, lookup_only=True).looked_up)


def write_grid_files(grid: GridConfig, the_plan: dict | None = None) -> None:
    """``grid.yaml`` and ``plan.json`` of the grid directory."""
    grid_dir = Path(grid.output_dir)
    grid_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(grid_dir / "grid.yaml", dump_grid(grid))
    write_json(grid_dir / "plan.json", the_plan if the_plan is not None else plan(grid))
