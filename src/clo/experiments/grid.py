"""Running a grid: data -> train -> eval -> report, each stage cached behind a done-marker.

Layout of a grid directory (``GridConfig.output_dir``)::

    grid.yaml                      the resolved grid config
    plan.json                      every run and evaluation the grid expects (reports show gaps)
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

Each stage's marker fingerprints its inputs, including the fingerprints of the stages it reads
from, the content digests of the files it reads (``data.path``, a prebuilt dataset, prompt files)
and the identity of a local model directory (names, sizes and mtimes of its weight files), so
changing the data, a setting or a model redoes exactly what depends on it. A stage whose
fingerprint changed runs from a clean output: its output directory or files are removed first
(:func:`clo.experiments.stages.run_stage`), so that no result of the old inputs survives (the
trainer would otherwise return its old ``result.json``, an evaluation its cached items). The
translation cache (``data/<lang>/translations.sqlite``, keyed by translator and text) is kept.
The stage functions come from a :class:`StageFunctions` (by default the real ``clo.data``,
``clo.train``, ``clo.eval`` and ``clo.report``); tests pass their own.
"""

from __future__ import annotations

import hashlib
import logging
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from clo.config import Config, dump_config
from clo.experiments.config import (
    BASE_VARIANT,
    PAIRWISE_TASKS,
    EvalJob,
    GridConfig,
    RunSpec,
    dump_grid,
    expand,
)
from clo.experiments.stages import (
    StageNotDone,
    fingerprint,
    lookup_stage,
    marker_path,
    run_stage,
    write_json_atomic,
)
from clo.fingerprints import content_digest

# Content-addressed caches a cleared data directory keeps: rows are keyed by the translator's
# fingerprint and the source text, so they are never stale, and they are the expensive part.
DATA_KEEP = ("translations.sqlite", "translations.sqlite-*")

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
    write_records(train, out_dir / "train.jsonl")
    write_records(val, out_dir / "validation.jsonl")
    for n in subset_sizes(cfg.data.subsets, len(train)):
        write_records(train[:n], out_dir / "subsets" / f"train_{n}.jsonl")
    return {"source": str(path), "train": len(train), "validation": len(val)}


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
    """The AlpacaEval instructions in ``lang``, translated once per grid with ``data.translator``.

    Every run of a language is then judged on the same prompts, and the translation is not
    repeated per run. Only the first ``cfg.eval.limit`` instructions (all when None), the ones an
    evaluation with ``cfg`` uses; the grid passes the largest limit of its jobs. Writes
    ``[{"instruction": translated, "instruction_en": original}, ...]``.
    """
    from clo.data.translators import translate_texts
    from clo.eval.alpacaeval import load_instructions

    rows = load_instructions(Path(instructions_file) if instructions_file else None,
                             Path(cfg.eval.data_dir) if cfg.eval.data_dir else None)[:cfg.eval.limit]
    english = [r["instruction"] for r in rows]
    out = translate_texts(english, "en", lang, cfg.data.translator, out_path.with_suffix(".sqlite"))
    write_json_atomic(out_path, [{"instruction": t, "instruction_en": e} for t, e in zip(out, english)])
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
# The grid


def run_dir(grid_dir: Path, run: RunSpec) -> Path:
    return Path(grid_dir) / "runs" / run.run_id


def data_dir(grid_dir: Path, lang: str) -> Path:
    return Path(grid_dir) / "data" / lang


def _file_digest(path: Path) -> dict:
    """``{"path"}`` and :func:`clo.fingerprints.content_digest` of a file or directory."""
    return {"path": str(path), **content_digest(path)}


def model_identity(spec: str) -> dict | None:
    """What identifies a local model directory beyond its spec: the names, sizes and modification
    times of its weight files (as :func:`clo.train.reference.model_identity`; no hashing of
    billions of weights). None for a hub id or an offline model name, which the spec names."""
    from clo.models import OFFLINE_MODELS

    if spec in OFFLINE_MODELS or not Path(spec).expanduser().is_dir():
        return None
    from clo.train.reference import model_identity as identity

    return identity(spec)


def _data_inputs(lang: str, cfg: Config) -> dict:
    """The data build's fingerprinted inputs: the data config, the content of the file or
    directory ``data.path`` names, and the translation model's identity when it is a directory.
    (Keys are added only when they apply, so a hub-sourced build keeps its fingerprint.)"""
    inputs: dict = {"lang": lang, "data": cfg.data.model_dump(mode="json")}
    if cfg.data.path:
        inputs["source"] = _file_digest(Path(cfg.data.path))
    translator = model_identity(cfg.data.translator.model)
    if translator is not None:
        inputs["translator_model"] = translator
    return inputs


def _model_inputs(spec: str) -> dict:
    """``{"model": spec}``, plus ``model_identity`` for a local directory."""
    ident = model_identity(spec)
    return {"model": spec} if ident is None else {"model": spec, "model_identity": ident}


def plan(grid: GridConfig, runs: list[RunSpec] | None = None) -> dict:
    """What the grid expects: every run and, per run, every evaluation key."""
    runs = expand(grid) if runs is None else runs
    out = []
    for r in runs:
        jobs = run_jobs(grid, r)
        out.append({**r.describe(), "evals": [j.key(r.lang) for j in jobs],
                    "tasks": {j.key(r.lang): {"task": j.task, "lang": j.resolve_lang(r.lang)} for j in jobs}})
    return {"name": grid.name, "baseline": grid.baseline, "sizes": grid.sizes, "models": [m.name for m in grid.models],
            "langs": grid.langs, "variants": ([BASE_VARIANT] if grid.include_base else []) + [m.name for m in grid.methods],
            "runs": out}


def _instructions_limit(grid: GridConfig, jobs: list[EvalJob], runs: list[RunSpec],
                        key: tuple[str, str | None]) -> int | None:
    """How many AlpacaEval instructions the jobs translating ``key`` (language, file) use, for
    their runs and baselines: the largest ``limit`` (the job's, else the run's ``eval.limit``);
    None (all) when one of them has none."""
    limits = []
    for r in runs:
        for job in bind_jobs(r, jobs):
            if job.task != "alpacaeval" or "translated_file" in job.opts:
                continue
            if (job.resolve_lang(r.lang), job.opts.get("instructions_file")) != key or not _lang_applies(r, job):
                continue
            limit = job.opts.get("limit")
            limits.append(limit if limit is not None else r.config.eval.limit)
    return None if not limits or None in limits else max(limits)


@dataclass(frozen=True)
class StageRef:
    """One stage of a grid as :func:`run_grid` names it (``train/<run id>``, ``eval/<run id>/<key>``, ...).

    ``kind``: data, instructions (AlpacaEval instructions translated), train, eval (a task that
    needs no other run), samples, baseline-outputs, pairwise (judged against the baseline), report.
    """

    name: str
    kind: str
    lang: str | None = None
    run: RunSpec | None = None
    job: EvalJob | None = None
    key: tuple | None = None  # instructions: (lang, instructions file); baseline-outputs: the baseline run id


def stage_refs(grid: GridConfig, runs: list[RunSpec] | None = None) -> list[StageRef]:
    """Every stage :func:`run_grid` runs for ``grid``, in the order it runs them."""
    runs = expand(grid) if runs is None else runs
    jobs = grid.jobs()
    local = [j for j in jobs if j.task not in PAIRWISE_TASKS]
    pairwise = [j for j in jobs if j.task in PAIRWISE_TASKS]
    out = [StageRef(f"data/{lang}", "data", lang) for lang in grid.langs]
    for run in runs:
        if run.method is not None:
            out.append(StageRef(f"train/{run.run_id}", "train", run.lang, run))
        out += [StageRef(f"eval/{run.run_id}/{j.key(run.lang)}", "eval", j.resolve_lang(run.lang), run, j)
                for j in run_jobs(grid, run, local)]
        if grid.samples:
            out.append(StageRef(f"samples/{run.run_id}", "samples", run.lang, run))
    seen: set = set()
    for job in pairwise:
        if job.task != "alpacaeval" or "translated_file" in job.opts:
            continue
        for key, key_runs in _instruction_keys(grid, runs, job).items():
            if key[0] == "en" or key in seen:
                continue
            seen.add(key)
            name = f"instructions/{instructions_path(Path(grid.output_dir), *key).stem}"
            out.append(StageRef(name, "instructions", key[0], job=key_runs[0][1], key=key))
    by_cell = {(r.model, r.lang, r.size, r.variant): r for r in runs}
    outputs: set[str] = set()
    for run in runs:
        base = by_cell.get((run.model, run.lang, run.size, grid.baseline))
        for job in run_jobs(grid, run, pairwise):
            key = job.key(run.lang)
            if job.task == "alpacaeval" and base is not None:
                name = f"baseline-outputs/{base.run_id}/{key}"
                if name not in outputs:
                    outputs.add(name)
                    out.append(StageRef(name, "baseline-outputs", job.resolve_lang(run.lang), base, job))
            out.append(StageRef(f"eval/{run.run_id}/{key}", "pairwise", job.resolve_lang(run.lang), run, job,
                                key=None if base is None else (base.run_id,)))
    out.append(StageRef("report", "report"))
    return out


def bind_jobs(run: RunSpec, jobs: list[EvalJob]) -> list[EvalJob]:
    """The jobs as they run for ``run``: for a multilingual run, a ``tgt`` job once per target
    language (:meth:`EvalJob.bind`); other jobs (and every job of a one-language run) as they are."""
    if not run.multilingual:
        return list(jobs)
    return [b for j in jobs for b in ([j.bind(c) for c in run.langs] if j.lang == "tgt" else [j])]


def run_jobs(grid: GridConfig, run: RunSpec, jobs: list[EvalJob] | None = None) -> list[EvalJob]:
    """The evaluations of ``run`` (of ``jobs``, default every job of the grid), bound to its languages."""
    return [j for j in bind_jobs(run, grid.jobs() if jobs is None else jobs) if _job_applies(grid, run, j)]


def _instruction_keys(grid: GridConfig, runs: list[RunSpec], job: EvalJob) -> dict[tuple, list[tuple]]:
    """``{(language, instructions file): [(run, bound job), ...]}`` of the runs a pairwise job applies to."""
    out: dict[tuple, list[tuple]] = {}
    for r in runs:
        for bj in bind_jobs(r, [job]):
            if _job_applies(grid, r, bj):
                out.setdefault((bj.resolve_lang(r.lang), bj.opts.get("instructions_file")), []).append((r, bj))
    return out


def _lang_applies(run: RunSpec, job: EvalJob) -> bool:
    """``only_langs``: a bound job's language; a job of a multilingual run in a fixed language
    runs when one of the run's languages is listed."""
    if job.only_langs is None:
        return True
    if run.multilingual:
        return (job._bound in job.only_langs) if job._bound else any(c in job.only_langs for c in run.langs)
    return run.lang in job.only_langs


def _job_applies(grid: GridConfig, run: RunSpec, job: EvalJob) -> bool:
    if not _lang_applies(run, job):
        return False
    # A pairwise task compares a trained run with the baseline of the same size; the untrained
    # model has no size and the baseline is not compared with itself.
    if job.task in PAIRWISE_TASKS:
        return run.method is not None and run.variant != grid.baseline
    return True


@dataclass
class GridResult:
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

    A failing stage is logged to its run's ``log.txt`` and ``failed.json`` and the grid goes on
    with what does not depend on it (``fail_fast`` re-raises instead); the report is written
    at the end either way, with the missing results as gaps.

    ``only`` (a predicate on stage names such as ``train/<run id>``) runs just those stages, as
    one job of a launcher does (:mod:`clo.experiments.launchers`): every other stage is looked up
    by its done-marker (the same fingerprints), and what depends on one that is not done is
    recorded in ``pending``, not as a failure. ``only=lambda name: False`` runs nothing and says
    what is done. ``stage_runner`` replaces :func:`~clo.experiments.stages.run_stage` (a training
    job's worker nodes follow the first node's decision instead of writing markers).
    ``lookup_only``: run nothing and write nothing, only say which stages are done (``looked_up``).
    """
    stages = stages or StageFunctions()
    t_start = time.perf_counter()
    grid_dir = Path(grid.output_dir)
    if lookup_only:
        only, progress = (lambda name: False), False
    else:
        grid_dir.mkdir(parents=True, exist_ok=True)
    runs = expand(grid)
    the_plan = plan(grid, runs)
    if only is None:  # a launcher writes them once, before its jobs start
        write_grid_files(grid, the_plan)
    result = GridResult(grid_dir)

    jobs = grid.jobs()
    local = [j for j in jobs if j.task not in PAIRWISE_TASKS]
    pairwise = [j for j in jobs if j.task in PAIRWISE_TASKS]
    n_stages = (len(grid.langs) + sum(1 for r in runs if r.method) + 1
                + sum(len(run_jobs(grid, r, jobs)) for r in runs)
                + (len(runs) if grid.samples else 0)
                + len({(r.model, r.lang, r.size, j.key(r.lang)) for r in runs for j in run_jobs(grid, r, pairwise)
                       if j.task == "alpacaeval"}))
    bar = tqdm(total=n_stages, desc=f"grid {grid.name}", unit="stage", disable=not progress)

    def stage(name: str, marker: Path, inputs: Any, fn: Callable[[], Any], clear: tuple[Path, ...] = (),
              keep: tuple[str, ...] = (), ignore: tuple[str, ...] = ()) -> tuple[Any, str]:
        """Run one stage; ``clear``: its outputs, removed when its inputs changed; ``ignore``: input
        keys that do not change its results (see :func:`clo.experiments.stages.run_stage`)."""
        bar.set_postfix_str(name, refresh=True)
        if only is not None and not only(name):
            out, fp = lookup_stage(name, marker, inputs, ignore=ignore)  # StageNotDone: left to its job
            result.looked_up.append(name)
            bar.update(1)
            return out, fp
        out, fp, ran = stage_runner(name, marker, inputs, fn, clear=clear, keep=keep, ignore=ignore)
        (result.ran if ran else result.skipped).append(name)
        bar.update(1)
        return out, fp

    def fail(key: str, rdir: Path | None, err: BaseException) -> None:
        if isinstance(err, StageNotDone):  # another job's stage: nothing failed here
            result.pending[key] = str(err)
            log.debug("%s: waits for %s", key, err)
            return
        msg = f"{type(err).__name__}: {err}"
        result.failures[key] = msg
        log.error("%s failed: %s", key, msg)
        if rdir is not None and not lookup_only:
            write_json_atomic(rdir / "failed.json", {"error": msg, "traceback": traceback.format_exc()})
        if fail_fast:
            raise err

    # -- data: once per language ------------------------------------------------------------
    data: dict[str, tuple[dict, str]] = {}
    for lang in grid.langs:
        cfg = next(r.config for r in runs if r.lang == lang)
        ddir = data_dir(grid_dir, lang)
        if grid.dataset:
            src = Path(grid.dataset[lang])
            inputs = {"lang": lang, "data": cfg.data.model_dump(mode="json"), "prebuilt": _file_digest(src)}
            fn = lambda src=src, cfg=cfg, ddir=ddir: stages.prebuilt(src, cfg, ddir)
        else:
            inputs = _data_inputs(lang, cfg)
            fn = lambda cfg=cfg, ddir=ddir: stages.build_data(cfg, ddir)
        try:
            out, fp = stage(f"data/{lang}", marker_path(ddir, "data"), inputs, fn, clear=(ddir,), keep=DATA_KEEP)
            data[lang] = (out, fp)
        except Exception as e:  # noqa: BLE001 - recorded, the other languages go on
            fail(f"data/{lang}", None, e)

    # -- train and the evaluations that need no other run ----------------------------------
    trained: dict[str, tuple[str, str]] = {}  # run id -> (model to evaluate, its fingerprint)
    eval_fps: dict[tuple[str, str], tuple[str, Path]] = {}  # (run id, job key) -> (fp, output dir)
    for run in runs:
        rdir = run_dir(grid_dir, run)
        if run.lang not in data and run.method is not None:
            continue
        if not lookup_only:
            rdir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(rdir / "run.json", run.describe())
            _write_text_atomic(rdir / "config.yaml", dump_config(run.config))
        with _RunLog(None if lookup_only else rdir / "log.txt"):
            try:
                if run.method is None:
                    model, model_fp = run.model_spec, fingerprint(_model_inputs(run.model_spec))
                else:
                    dres, dfp = data[run.lang]
                    ddir = data_dir(grid_dir, run.lang)
                    train_path = ddir / "train.jsonl" if run.size is None else ddir / "subsets" / f"train_{run.size}.jsonl"
                    n_train = dres.get("train") if isinstance(dres, dict) else None  # a count, as build_dataset's summary
                    if not train_path.is_file() and run.size is not None and n_train and run.size >= n_train:
                        # The build names the largest subset after the training set's real size
                        # (6400 requested, 6080 left after validation and checks): that is the
                        # whole training split.
                        log.warning("%s: size %d >= the %d training records; training on all of them",
                                    run.run_id, run.size, n_train)
                        train_path = ddir / "train.jsonl"
                    if not train_path.is_file():
                        raise FileNotFoundError(
                            f"{train_path}: no training subset of size {run.size} (the dataset has "
                            f"{n_train if n_train is not None else '?'} training records)"
                        )
                    inputs = {**_model_inputs(run.model_spec), "lang": run.lang, "size": run.size, "data": dfp,
                              "train": run.config.train.model_dump(mode="json")}
                    out, model_fp = stage(
                        f"train/{run.run_id}", marker_path(rdir, "train"), inputs,
                        lambda run=run, tp=train_path, ddir=ddir, rdir=rdir: stages.train(
                            run.config, tp, ddir / "validation.jsonl", rdir / "train"),
                        clear=(rdir / "train",), ignore=_train_ignore(),
                    )
                    model = out["checkpoint"]
                trained[run.run_id] = (model, model_fp)
                for job in run_jobs(grid, run, local):
                    _eval_job(grid, run, job, model, model_fp, rdir, stages, stage, eval_fps, opts={})
                if grid.samples:
                    stage(f"samples/{run.run_id}", marker_path(rdir, "samples"),
                          {"model": model_fp, "prompts": grid.samples, "max_new_tokens": run.config.eval.max_new_tokens},
                          lambda run=run, model=model, rdir=rdir: _write_samples(
                              rdir, grid.samples, stages.samples(model, run.config, grid.samples)),
                          clear=(rdir / "samples.json",))
                if not lookup_only:
                    (rdir / "failed.json").unlink(missing_ok=True)
            except Exception as e:  # noqa: BLE001 - recorded in failed.json, the grid goes on
                fail(run.run_id, rdir, e)

    # -- AlpacaEval instructions: translated once per language, shared by its runs ------------
    translated: dict[tuple[str, str | None], tuple[str, str]] = {}  # (lang, file) -> (path, fp)
    for job in pairwise:
        if job.task != "alpacaeval" or "translated_file" in job.opts:
            continue
        for key, key_runs in _instruction_keys(grid, runs, job).items():
            lang_runs = [r for r, _ in key_runs]
            if key[0] == "en" or not lang_runs or key in translated:
                continue
            # Only the instructions the jobs use: the largest limit of those sharing this file.
            limit = _instructions_limit(grid, pairwise, runs, key)
            cfg = lang_runs[0].config
            cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"limit": limit})})
            path = instructions_path(grid_dir, *key)
            inputs = {"lang": key[0], "translator": cfg.data.translator.model_dump(mode="json"),
                      "instructions_file": key[1], "data_dir": cfg.eval.data_dir, "limit": limit}
            if key[1] is not None and Path(key[1]).is_file():
                inputs["instructions_file_digest"] = _file_digest(Path(key[1]))["sha256"]
            translator = model_identity(cfg.data.translator.model)
            if translator is not None:
                inputs["translator_model"] = translator
            bar.total += 1
            try:
                _, fp = stage(f"instructions/{path.stem}", path.with_suffix(".done.json"), inputs,
                              lambda cfg=cfg, key=key, path=path: stages.translate_instructions(
                                  cfg, key[0], path, key[1]),
                              clear=(path,))  # not its .sqlite: translations are keyed by translator and text
                translated[key] = (str(path), fp)
            except Exception as e:  # noqa: BLE001 - the runs of this language report the gap
                fail(f"instructions/{key[0]}", None, e)

    # -- pairwise evaluations: need the baseline run's outputs -----------------------------
    # The baseline's AlpacaEval answers are generated once per cell and language, then judged
    # against every compared run of that cell (not regenerated per comparison).
    base_outputs: dict[tuple[str, str], tuple[str, str]] = {}  # (run id, key) -> (file, fingerprint)
    base_failed: dict[tuple[str, str], str] = {}

    def baseline_outputs(base_run: RunSpec, job: EvalJob, topts: dict, textra: dict) -> tuple[str, str]:
        key = job.key(base_run.lang)
        if (base_run.run_id, key) in base_failed:
            raise RuntimeError(f"the baseline's outputs failed earlier: {base_failed[(base_run.run_id, key)]}")
        if (base_run.run_id, key) in base_outputs:
            return base_outputs[(base_run.run_id, key)]
        b_model, b_fp = trained[base_run.run_id]
        lang = job.resolve_lang(base_run.lang)
        bdir = run_dir(grid_dir, base_run) / "alpacaeval_outputs"
        job_opts = {k: v for k, v in job.opts.items() if k in _OUTPUTS_OPTIONS}
        opts = {**job_opts, "lang": lang, **topts}
        inputs = {"model": b_fp, "task": "alpacaeval-outputs", "lang": lang, "opts": _with_file_digests(job_opts),
                  "eval": base_run.config.eval.model_dump(mode="json", exclude={"judge"}), **textra}
        try:
            _, fp = stage(f"baseline-outputs/{base_run.run_id}/{key}", marker_path(bdir, key), inputs,
                          lambda: stages.evaluate("alpacaeval-outputs", b_model, base_run.config, bdir / key, opts),
                          clear=(bdir / key,), ignore=_eval_ignore())
        except Exception as e:
            # Every later comparison with this baseline reports the failure without retrying it.
            base_failed[(base_run.run_id, key)] = f"{type(e).__name__}: {e}"
            raise
        base_outputs[(base_run.run_id, key)] = (str(bdir / key / f"alpacaeval-outputs-{lang}.model_outputs.json"), fp)
        return base_outputs[(base_run.run_id, key)]

    if pairwise:
        by_cell = {(r.model, r.lang, r.size, r.variant): r for r in runs}
        for run in runs:
            if run.run_id not in trained or run.run_id in result.failures:
                continue
            rdir = run_dir(grid_dir, run)
            with _RunLog(None if lookup_only else rdir / "log.txt"):
                try:
                    base_run = by_cell.get((run.model, run.lang, run.size, grid.baseline))
                    for job in run_jobs(grid, run, pairwise):
                        if base_run is None or base_run.run_id not in trained:
                            raise RuntimeError(f"{job.task}: baseline run {grid.baseline} of this cell did not finish")
                        b_model, b_fp = trained[base_run.run_id]
                        model, model_fp = trained[run.run_id]
                        topts, textra = {}, {}
                        tkey = (job.resolve_lang(run.lang), job.opts.get("instructions_file"))
                        if job.task == "alpacaeval" and "translated_file" not in job.opts and tkey[0] != "en":
                            if tkey not in translated:
                                raise RuntimeError(f"{job.task}: the {tkey[0]} instructions were not translated")
                            topts["translated_file"], textra["instructions"] = translated[tkey]
                        if job.task == "alpacaeval":
                            out_path, out_fp = baseline_outputs(base_run, job, topts, textra)
                            opts = {"baseline_outputs": out_path, **topts,
                                    "baseline_name": job.opts.get("baseline_name", b_model)}
                            extra = {"baseline": b_fp, "baseline_outputs": out_fp, **textra}
                        else:
                            opts, extra = {"baseline": b_model, **topts}, {"baseline": b_fp, **textra}
                        _eval_job(grid, run, job, model, model_fp, rdir, stages, stage, eval_fps,
                                  opts=opts, extra=extra)
                    # (A launcher's pairwise job leaves the record of an evaluation job's failure.)
                    if not lookup_only and run.run_id not in result.pending:
                        (rdir / "failed.json").unlink(missing_ok=True)
                except Exception as e:  # noqa: BLE001
                    fail(run.run_id, rdir, e)

    # -- report ----------------------------------------------------------------------------
    try:
        # A job of a launcher knows other jobs' failures as stages not done: the same keys.
        inputs = {"evals": sorted(f"{k[0]}:{k[1]}:{v[0]}" for k, v in eval_fps.items()),
                  "failures": sorted(set(result.failures) | set(result.pending)), "plan": fingerprint(the_plan)}
        result.report, _ = stage("report", marker_path(grid_dir / "report", "report"), inputs,
                                 lambda: stages.report(grid_dir), clear=(grid_dir / "report",))
    except Exception as e:  # noqa: BLE001
        fail("report", None, e)
    bar.close()
    _MODELS.clear()
    result.seconds = time.perf_counter() - t_start
    if not lookup_only and (only is None or only("report")):
        write_json_atomic(grid_dir / "status.json", {
            "ok": result.ok and not result.pending, "failures": {**result.pending, **result.failures},
            "ran": result.ran, "skipped": result.skipped + result.looked_up, "seconds": round(result.seconds, 1),
        })
    return result


def write_grid_files(grid: GridConfig, the_plan: dict | None = None) -> None:
    """``grid.yaml`` and ``plan.json`` of the grid directory."""
    grid_dir = Path(grid.output_dir)
    grid_dir.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(grid_dir / "grid.yaml", dump_grid(grid))
    write_json_atomic(grid_dir / "plan.json", the_plan if the_plan is not None else plan(grid))


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{uuid.uuid4().hex[:12]}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def instructions_path(grid_dir: Path, lang: str, instructions_file: str | None) -> Path:
    """Where the grid keeps the AlpacaEval instructions translated into ``lang``."""
    name = f"instructions_{lang}" if instructions_file is None else f"instructions_{lang}_{fingerprint(instructions_file)}"
    return Path(grid_dir) / "alpacaeval" / f"{name}.json"


# The options of `alpacaeval` that `alpacaeval-outputs` shares (the rest concern the judging).
_OUTPUTS_OPTIONS = frozenset({"limit", "instructions_file", "translated_file", "batch_size", "max_new_tokens"})


def _eval_job(grid, run, job, model, model_fp, rdir, stages, stage, eval_fps, opts, extra=None) -> None:
    if not _job_applies(grid, run, job):
        return
    lang = job.resolve_lang(run.lang)
    key = job.key(run.lang)
    out_dir = rdir / "eval" / key
    extra = dict(extra or {})
    held_out = held_out_prompts(grid, run, job)
    if held_out is not None:
        # Languages without Language Confusion Benchmark prompts (sw, yo): the run's held-out
        # validation prompts. Their content is an input (the untrained model's fingerprint does not
        # carry the data's); the path is not, so that the grid directory may move.
        opts = {**opts, "held_out_file": str(held_out)}
        extra["held_out"] = _file_digest(held_out).get("sha256", "missing")
    all_opts = {**job.opts, "lang": lang, **opts}
    inputs = {"model": model_fp, "task": job.task, "lang": lang, "opts": _with_file_digests(job.opts),
              "eval": run.config.eval.model_dump(mode="json"), **extra}
    result, fp = stage(f"eval/{run.run_id}/{key}", marker_path(rdir / "eval", key), inputs,
                       lambda: stages.evaluate(job.task, model, run.config, out_dir, all_opts), clear=(out_dir,),
                       ignore=_eval_ignore())
    eval_fps[(run.run_id, key)] = (fp, out_dir)
    if isinstance(result, dict) and (Path(model) / "trainer_state.json").is_file():
        from clo.train.card import add_eval_results

        add_eval_results(model, job.task, lang, result)  # the trained model's card lists its results


def held_out_prompts(grid: GridConfig, run: RunSpec, job: EvalJob) -> Path | None:
    """The held-out validation records of the run's language when ``job`` (a fidelity job) takes
    its prompts from them (:func:`clo.eval.fidelity.uses_held_out`), or when it is a preference job
    that names no ``held_out_file`` of its own; else None."""
    if job.task == "preference":
        if job.opts.get("held_out_file"):
            return None
        return data_dir(Path(grid.output_dir), run.lang) / "validation.jsonl"
    if job.task != "fidelity":
        return None
    from clo.eval.fidelity import uses_held_out

    lang = job.resolve_lang(run.lang)
    if not uses_held_out(lang, job_data_dir(run, job), job.opts):
        return None
    if run.multilingual:  # one language's validation records (the data stage writes them)
        return data_dir(Path(grid.output_dir), run.lang) / f"validation_{lang if lang in run.langs else run.langs[0]}.jsonl"
    return data_dir(Path(grid.output_dir), run.lang) / "validation.jsonl"


def job_data_dir(run: RunSpec, job: EvalJob) -> Path | None:
    """The evaluation data directory of a job: its ``opts.data_dir``, else the run's ``eval.data_dir``."""
    d = job.opts.get("data_dir") or run.config.eval.data_dir
    return Path(d) if d else None


def _train_ignore() -> tuple[str, ...]:
    """Training settings that change how a run computes, not what (the trainer resumes a run with
    other values of them): changing one neither clears nor reruns a training."""
    from clo.train.trainer import OPERATIONAL_KEYS

    return tuple(f"train.{k}" for k in OPERATIONAL_KEYS)


def _eval_ignore() -> tuple[str, ...]:
    """Evaluation settings that change no result: the batch sizes and vLLM's resource settings
    (those :mod:`clo.eval.core` leaves out of its item cache's fingerprint, but for ``limit``,
    which changes the number of items), and ``eval.tasks`` (the grid's jobs say what runs)."""
    from clo.eval.core import _NOT_IN_FINGERPRINT

    def flat(tree: dict, prefix: str) -> list[str]:
        return [k for name, v in tree.items()
                for k in (flat(v, f"{prefix}{name}.") if isinstance(v, dict) else [f"{prefix}{name}"])]

    return (*(k for k in flat(_NOT_IN_FINGERPRINT, "eval.") if k != "eval.limit"), "opts.batch_size")


def _with_file_digests(opts: dict) -> dict:
    """Options as fingerprinted: a value naming an existing file also carries its content's
    digest, so editing a prompts file reruns the evaluations that read it."""
    out = {}
    for k, v in opts.items():
        if isinstance(v, str) and Path(v).is_file():
            out[k] = {"path": v, "sha256": hashlib.sha256(Path(v).read_bytes()).hexdigest()[:16]}
        else:
            out[k] = v
    return out


def _write_samples(rdir: Path, prompts: list[str], answers: list[str]) -> dict:
    if len(answers) != len(prompts):
        raise ValueError(f"samples: {len(prompts)} prompts but {len(answers)} answers")
    write_json_atomic(rdir / "samples.json", [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)])
    return {"n": len(prompts)}
