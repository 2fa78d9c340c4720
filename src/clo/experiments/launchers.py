"""Launchers: where the stages of a grid run (``launcher.kind`` of the grid, ``clo run --launcher``).

:data:`LAUNCHERS` (add one with :func:`register_launcher`):

- ``local``: every stage in this process, one after another (:func:`clo.experiments.grid.run_grid`);
- ``slurm``: each stage a Slurm job submitted through `submitit <https://github.com/facebookincubator/submitit>`_,
  with the dependencies data -> train -> eval / pairwise -> report (:func:`job_graph`), the GPUs,
  nodes and time limits of ``launcher.stages`` per stage, and training inside its job through
  ``accelerate launch`` (several GPUs, several nodes: :func:`accelerate_command`).

A job is :func:`run_grid` with ``only`` set to its own stages: it writes the same done-markers as the
in-process run and reads those of the stages it depends on, so a resubmitted grid skips what
finished (jobs whose stages are all done are not submitted at all), and an in-process ``clo run``
of the same grid directory skips what the cluster ran, and vice versa.

On Slurm, a job starts when the jobs it depends on ended well (``afterok``; a failed dependency
cancels its dependents, ``--kill-on-invalid-dep=yes``), the report when all ended in any way
(``afterany``): it shows the failures as gaps. submitit's ``local`` and ``debug`` executors
(``launcher.executor``) run the same jobs on this machine, one after another in dependency order
(they have no scheduler): for tests and for trying a set-up before a cluster.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clo.config import dump_config
from clo.experiments.config import LAUNCHER_KINDS, GridConfig, LauncherConfig, RunSpec
from clo.experiments.graph import PHASES, grid_stages
from clo.experiments.grid import GridResult, StageFunctions, done_stages, run_grid, write_grid_files
from clo.experiments.stages import StageNotDone, lookup_stage, run_stage
from clo.io import atomic_write
from clo.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a launcher did: ``ok``, lines to print, failures (key -> error)."""

    ok: bool
    lines: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    grid_result: GridResult | None = None  # the in-process launcher's
    jobs: dict[str, Any] = field(default_factory=dict)  # job name -> submitit job


LAUNCHERS: Registry[Callable[[], Any]] = Registry("launcher")


def register_launcher(name: str):
    def deco(cls):
        LAUNCHERS[name] = cls
        LAUNCHER_KINDS.add(name)  # launcher.kind accepts it from now on
        return cls

    return deco


def get_launcher(name: str):
    return LAUNCHERS.get(name)()


@register_launcher("local")
class InProcessLauncher:
    """Every stage in this process (the default)."""

    def launch(self, grid: GridConfig, *, stages: StageFunctions | None = None, fail_fast: bool = False,
               progress: bool = True) -> Outcome:
        res = run_grid(grid, stages, fail_fast=fail_fast, progress=progress)
        lines = [f"grid {grid.name}: {len(res.ran)} stages ran, {len(res.skipped)} already done, {res.seconds:.0f}s"]
        if res.report:
            lines.append(f"report: {res.report['dir']}/report.md")
        return Outcome(res.ok, lines, dict(res.failures), res)


# ---------------------------------------------------------------------------------------------
# The jobs of a grid


@dataclass(frozen=True)
class StageJob:
    """One cluster job: the stages it runs (names of :func:`~clo.experiments.graph.grid_stages`),
    the jobs it waits for, and the ``launcher.stages`` entry it takes its resources from."""

    name: str
    phase: str  # data, train, eval, pairwise, report
    stages: tuple[str, ...]
    deps: tuple[str, ...] = ()


def job_graph(grid: GridConfig, runs: list[RunSpec] | None = None) -> list[StageJob]:
    """The jobs of ``grid`` in dependency order (data, train, eval, pairwise, report): each stage of
    :func:`~clo.experiments.graph.grid_stages` goes to the job its ``group`` names (one per language
    and per set of AlpacaEval instructions to translate, per trained run, per run for the
    evaluations needing no other run and the samples, per cell of model, language and size for
    the baseline's answers and the judged comparisons), and a job waits for the jobs of the stages
    its stages read (those not already implied by another of its dependencies); the report waits
    for all."""
    stages = grid_stages(grid, runs)
    group = {s.name: s.group for s in stages}
    members: dict[str, list] = {}
    for s in stages:
        members.setdefault(s.group, []).append(s)
    direct = {g: {group[d] for s in ss for d in s.deps} - {g} for g, ss in members.items()}

    def ancestors(g: str, seen: set[str]) -> set[str]:
        for d in direct[g] - seen:
            seen.add(d)
            ancestors(d, seen)
        return seen

    order = {g: (PHASES.index(ss[0].phase), i) for i, (g, ss) in enumerate(members.items())}
    jobs = []
    for g in sorted(members, key=order.__getitem__):
        implied = set().union(*(ancestors(d, set()) for d in direct[g])) if direct[g] else set()
        deps = tuple(sorted((d for d in direct[g] if d not in implied), key=order.__getitem__))
        jobs.append(StageJob(g, members[g][0].phase, tuple(s.name for s in members[g]), deps))
    report = next(j for j in jobs if j.phase == "report")
    return [j for j in jobs if j is not report] + [replace(report, deps=tuple(j.name for j in jobs if j is not report))]


# ---------------------------------------------------------------------------------------------
# Inside a job


def accelerate_command(lc: LauncherConfig, config: Path, train_path: Path, val_path: Path | None, out_dir: Path,
                       *, node_rank: int = 0, main_host: str | None = None) -> list[str]:
    """``accelerate launch ... -m clo.cli train ...`` for a training job of ``launcher.stages.train``:
    ``gpus_per_node x nodes`` processes (the global ``train.batch_size`` is dealt over them, see
    docs/train.md), on the CPU when the stage has no GPU; across nodes, this node's rank and the
    first node as the rendezvous. ``launcher.accelerate_config`` (e.g. FSDP2) gives the rest."""
    res = lc.stages.train
    procs = max(res.gpus_per_node, 1) * res.nodes
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]  # `accelerate launch` of this Python
    if lc.accelerate_config:
        cmd += ["--config_file", str(lc.accelerate_config)]
    if res.gpus_per_node == 0:
        cmd += ["--cpu"]
    elif procs > 1 and not lc.accelerate_config:
        cmd += ["--multi_gpu"]
    cmd += ["--num_processes", str(procs), "--num_machines", str(res.nodes),
            "--mixed_precision", "no", "--dynamo_backend", "no"]  # clo sets the dtypes itself
    if res.nodes > 1:
        if not main_host:
            raise RuntimeError("multi-node training: the job's first host is unknown (not inside a Slurm job?)")
        cmd += ["--machine_rank", str(node_rank), "--main_process_ip", main_host,
                "--main_process_port", str(lc.main_process_port)]
    cmd += ["-m", "clo.cli", "train", "--config", str(config), "--data", str(train_path), "--output", str(out_dir)]
    if val_path is not None and Path(val_path).is_file():
        cmd += ["--val", str(val_path)]
    return cmd


@dataclass
class AccelerateTrain:
    """The train stage function of a training job: ``accelerate launch`` of ``clo train`` on the
    run's config, then the trainer's ``result.json`` as the stage's result (the in-process stage's)."""

    launcher: LauncherConfig
    node_rank: int = 0
    hosts: tuple[str, ...] = ()

    def __call__(self, cfg, train_path: Path, val_path: Path, out_dir: Path) -> dict:
        out_dir = Path(out_dir)
        config = out_dir.parent / "train.config.yaml"
        atomic_write(config, dump_config(cfg))  # every node writes the same text
        cmd = accelerate_command(self.launcher, config, Path(train_path), Path(val_path), out_dir,
                                 node_rank=self.node_rank, main_host=self.hosts[0] if self.hosts else None)
        log.info("training: %s", " ".join(cmd))
        rc = subprocess.run(cmd, check=False).returncode
        if rc != 0:
            raise RuntimeError(f"accelerate launch of clo train exited with {rc} (3: the loss diverged); its "
                               f"output is in this job's log; command: {' '.join(cmd)}")
        if self.node_rank != 0:
            return {}
        import json

        res = json.loads((out_dir / "result.json").read_text(encoding="utf-8"))
        return {"checkpoint": res["best_checkpoint"], "metrics": res["metrics"]}


def follow_stage(name: str, marker: Path, inputs: Any, fn: Callable[[], Any], *, clear=(), keep=(), ignore=()):
    """The stage runner of a multi-node training job's other nodes: join the training the first
    node runs (it alone clears, resumes and writes the markers), or nothing when it is done."""
    try:
        lookup_stage(name, marker, inputs, ignore=ignore)
    except StageNotDone:
        fn()
    raise StageNotDone(name, "run by the job's first node")


class JobFailed(RuntimeError):
    pass


def _node() -> tuple[int, tuple[str, ...]]:
    try:
        import submitit

        env = submitit.JobEnvironment()
        return env.node, tuple(env.hostnames)
    except Exception:  # noqa: BLE001 - not inside a submitit job
        return 0, ()


def run_job(grid: GridConfig, job: StageJob, stages: StageFunctions | None = None) -> dict:
    """The body of one job (pickled by submitit): the job's stages, the others looked up."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rank, hosts = _node()
    stages = stages or StageFunctions()
    if job.phase == "train" and stages.train is StageFunctions.train:  # the real trainer, not a test's
        stages = replace(stages, train=AccelerateTrain(grid.launcher, rank, hosts))
    selected = frozenset(job.stages)
    res = run_grid(grid, stages, only=selected.__contains__, progress=False,
                   stage_runner=run_stage if rank == 0 else follow_stage)
    if rank != 0:
        return {"node": rank}
    finished = set(res.ran) | set(res.skipped)
    missing = [s for s in job.stages if s not in finished]
    if missing:
        why = {**res.pending, **res.failures}
        # The errors of this job's runs and stages (a key is a run id or a stage name), else all.
        mine = {k: v for k, v in why.items() if any(k == s or f"/{k}/" in f"/{s}/" for s in missing)} or why
        raise JobFailed(f"{job.name}: {len(missing)} stage(s) did not finish ({', '.join(missing[:4])}"
                        + (", ..." if len(missing) > 4 else "") + "): "
                        + "; ".join(f"{k}: {v}" for k, v in mine.items()))
    return {"ran": res.ran, "skipped": res.skipped}


# ---------------------------------------------------------------------------------------------
# Submitting


def job_parameters(grid: GridConfig, job: StageJob, dep_ids: list[str], *, afterany: bool = False) -> dict:
    """submitit's (AutoExecutor) parameters of ``job``: its stage's resources, the grid's Slurm
    settings and the dependency on the jobs ``dep_ids``."""
    lc = grid.launcher
    res = getattr(lc.stages, job.phase)
    extra = {**lc.additional_parameters, **res.additional_parameters}
    if dep_ids:
        extra["dependency"] = ("afterany:" if afterany else "afterok:") + ":".join(dep_ids)
        if not afterany:
            extra["kill_on_invalid_dep"] = "yes"  # a failed dependency cancels the job, not leaves it pending
    params: dict[str, Any] = {
        "name": f"clo-{grid.name}-{job.name}".replace("/", "-")[:120],
        "timeout_min": res.timeout_min, "nodes": res.nodes, "tasks_per_node": 1,
        "gpus_per_node": res.gpus_per_node, "cpus_per_task": res.cpus_per_task,
        "slurm_partition": res.partition or lc.partition, "slurm_account": lc.account, "slurm_qos": lc.qos,
        "slurm_setup": list(lc.setup) or None, "slurm_additional_parameters": extra or None,
    }
    if res.mem_gb is not None:
        params["mem_gb"] = res.mem_gb
    return {k: v for k, v in params.items() if v is not None}


def _error_line(e: BaseException) -> str:
    """The exception line of a failed job (submitit's error holds the job's traceback)."""
    import re

    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Failed|NotDone|Interrupt)\b: ", ln):
            return ln[:600]
    return " ".join(lines)[-400:]


def _executor(grid: GridConfig):
    try:
        import submitit
    except ImportError:
        from clo.config_base import ConfigError

        raise ConfigError("launcher slurm: needs submitit: pip install 'clo[slurm]'") from None

    lc = grid.launcher
    folder = Path(lc.folder) if lc.folder else Path(grid.output_dir) / "slurm"
    return submitit.AutoExecutor(folder=folder / "%j", cluster=lc.executor)


@register_launcher("slurm")
class SlurmLauncher:
    """Each stage a Slurm job (see the module docstring); ``executor`` builds the submitit executor
    (default: ``AutoExecutor`` of ``launcher.executor``)."""

    def __init__(self, executor: Callable[[GridConfig], Any] | None = None) -> None:
        self.make_executor = executor or _executor

    def jobs_to_submit(self, grid: GridConfig) -> tuple[list[StageJob], list[StageJob]]:
        """(jobs to submit, jobs whose stages are all done)."""
        done = done_stages(grid)
        graph = job_graph(grid)
        todo = [j for j in graph if not set(j.stages) <= done]
        if todo and graph[-1] not in todo:
            # Looked up now, the report matches its last run (the same stages missing); once the
            # other jobs ran, it will not: it goes with them.
            todo.append(graph[-1])
        return todo, [j for j in graph if j not in todo]

    def launch(self, grid: GridConfig, *, stages: StageFunctions | None = None, fail_fast: bool = False,
               progress: bool = True) -> Outcome:
        t0 = time.perf_counter()
        todo, done = self.jobs_to_submit(grid)
        if not todo:
            return Outcome(True, [f"grid {grid.name}: every stage is done ({len(done)} jobs); nothing submitted"])
        write_grid_files(grid)  # once, before the jobs start
        executor = self.make_executor(grid)
        wait = grid.launcher.executor != "slurm"  # submitit's local executors have no dependencies
        submitted: dict[str, Any] = {}
        failures: dict[str, str] = {}
        lines = []
        for job in todo:
            deps = [d for d in job.deps if d in submitted]
            afterany = job.phase == "report"
            if wait:
                bad = [d for d in deps if d in failures]
                if bad and not afterany:
                    failures[job.name] = f"not run: {', '.join(bad)} failed"
                    lines.append(f"  skipped {job.name}: {', '.join(bad)} failed")
                    continue
            executor.update_parameters(**job_parameters(grid, job, [submitted[d].job_id for d in deps],
                                                        afterany=afterany))
            sj = executor.submit(run_job, grid, job, stages)
            submitted[job.name] = sj
            after = f" after {', '.join(submitted[d].job_id for d in deps)}" if deps and not wait else ""
            lines.append(f"  job {sj.job_id}: {job.name}{after}")
            if wait:
                err = sj.exception()  # waits for the job; its stages recorded the error, dependents are skipped
                if err is not None:
                    failures[job.name] = _error_line(err)
                    lines[-1] += "  FAILED"
                    if fail_fast:
                        break
        head = (f"grid {grid.name}: {len(submitted)} job(s) submitted, {len(done)} already done"
                + (f" ({len(failures)} failed, {time.perf_counter() - t0:.0f}s)" if wait else ""))
        tail = [] if wait else [
            (f"logs: {Path(grid.launcher.folder or Path(grid.output_dir) / 'slurm')}/<job id>/; follow with "
             "`squeue --me`; run the same command again to resubmit what did not finish")]
        if wait and "report" in submitted and "report" not in failures:
            tail.append(f"report: {Path(grid.output_dir) / 'report'}/report.md")
        return Outcome(not failures, [head, *lines, *tail], failures, jobs=submitted)


__all__ = ["LAUNCHERS", "AccelerateTrain", "InProcessLauncher", "Outcome", "SlurmLauncher", "StageJob",
           "accelerate_command", "follow_stage", "get_launcher", "job_graph", "job_parameters", "register_launcher",
           "run_job"]
