"""The stages of a grid, listed once: what each reads, how it is fingerprinted, where it runs.

:func:`grid_stages` turns a :class:`~clo.experiments.config.GridConfig` into a list of
:class:`Stage` s in the order the in-process grid runs them. Everything else walks this list: the
execution loop (:func:`clo.experiments.grid.run_grid`, shared by the in-process launcher and
every Slurm job), the Slurm job graph (:func:`clo.experiments.launchers.job_graph`: a stage's
``group`` is its job, its ``phase`` the ``launcher.stages`` entry of its resources), the checks
before a grid runs (:mod:`clo.experiments.preflight`), the estimate
(:mod:`clo.experiments.estimate`) and ``clo run --dry-run --json``.

A stage's fingerprinted inputs are only what it reads, and files by their content, not their
path: a prebuilt dataset is its bytes and the split settings (not the translator, which it does not
use, nor where the file lies); the data build is the data config without the source's path, plus
the source's content; the AlpacaEval instructions are the file's content and the translator. The
fingerprints of the stages a stage reads (``deps``) are among its inputs, so a change reruns
exactly what depends on it.

Adding an axis or a kind of stage is adding its :class:`Stage` s here: the loop, the job graph,
the checks and the estimate follow from the list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clo.eval.task import is_pairwise
from clo.experiments.config import BASE_VARIANT, EvalJob, GridConfig, RunSpec, expand
from clo.experiments.stages import marker_path
from clo.fingerprints import content_digest, fingerprint
from clo.io import write_json

if TYPE_CHECKING:
    from clo.config import Config
    from clo.experiments.config import StageResources
    from clo.experiments.grid import GridResult, StageFunctions

log = logging.getLogger(__name__)

#: The ``launcher.stages`` entries, in the order the jobs of a grid run.
PHASES = ("data", "train", "eval", "pairwise", "report")

#: Content-addressed caches a cleared data directory keeps: rows are keyed by the translator's
#: fingerprint and the source text, so they are never stale, and they are the expensive part.
DATA_KEEP = ("translations.sqlite", "translations.sqlite-*")

#: Settings of the data build that change no record: the translation cache's location (its rows
#: are keyed by translator and text).
_DATA_NOT_READ = {"cache"}

# The options of `alpacaeval` that `alpacaeval-outputs` shares (the rest concern the judging).
_OUTPUTS_OPTIONS = frozenset({"limit", "instructions_file", "translated_file", "batch_size", "max_new_tokens"})


@dataclass(frozen=True, eq=False)
class Stage:
    """One stage of a grid.

    ``kind``: data, instructions (AlpacaEval instructions translated), train, eval (a task that needs
    no other run), samples, baseline-outputs, pairwise (judged against the baseline), report.
    ``inputs(state)`` gives the fingerprinted inputs once the ``deps`` (names of the stages it reads)
    are done (``state.done``: name -> (result, fingerprint)); ``call(functions, state)`` runs it.
    A failure is recorded under ``key``: the run id for a run's own stages, else the stage name.
    """

    name: str  # train/<run id>, eval/<run id>/<key>, ...: in logs, status.json and the Slurm jobs
    kind: str
    phase: str  # one of PHASES: the launcher.stages entry of its resources, its row in the estimate
    group: str  # the Slurm job that runs it
    marker: Path  # its done-marker
    inputs: Callable[[GridResult], dict] = field(repr=False)
    call: Callable[[StageFunctions, GridResult], Any] = field(repr=False)
    key: str = ""
    deps: tuple[str, ...] = ()
    lang: str | None = None  # an evaluation's language; else the run's or the data's
    run: RunSpec | None = None
    job: EvalJob | None = None
    eval_key: str | None = None  # the job's key (``belebele_de``) of an evaluation
    baseline: RunSpec | None = None  # the run a pairwise evaluation is compared with
    clear: tuple[Path, ...] = ()  # its outputs, removed when its inputs changed (but for ``keep`` globs)
    keep: tuple[str, ...] = ()
    # Called with its result once it ran or was found done (not when looked up for another job).
    after: Callable[[GridResult, Any], None] | None = field(default=None, repr=False)

    def ignore(self) -> tuple[str, ...]:
        """Input keys that change how the stage computes, not what (see :func:`clo.experiments.stages.run_stage`)."""
        if self.kind == "train":
            return _train_ignore()
        if self.kind in ("eval", "pairwise", "baseline-outputs"):
            return _eval_ignore()
        return ()

    def resources(self, grid: GridConfig) -> StageResources:
        """What a cluster job of this stage asks for (``launcher.stages.<phase>``)."""
        return getattr(grid.launcher.stages, self.phase)

    def describe(self) -> dict:
        """The stage as ``clo run --dry-run --json`` lists it (docs/experiments.md)."""
        r, j = self.run, self.job
        return {
            "name": self.name, "kind": self.kind, "phase": self.phase, "job": self.group, "deps": list(self.deps),
            "run": r.run_id if r else None, "model": r.model if r else None, "lang": r.lang if r else self.lang,
            "variant": r.variant if r else None, "method": r.method if r else None, "size": r.size if r else None,
            "ablation": r.ablation if r else None,
            "task": j.task if j else None, "eval": self.eval_key, "eval_lang": self.lang if j else None,
            "prompt_variant": _prompt_variant(j),
            # AlpacaEval's protocol variants (docs/paper.md): the judge's prompts and the answers' system prompt
            "judge_prompts": ([r.config.eval.judge.prompt, *([j.opts["also_judge_with"]]
                                                              if j.opts.get("also_judge_with") else [])]
                              if r and j and j.task == "alpacaeval" else None),
            "system_prompt": r.config.eval.system_prompt if r and j and j.task == "alpacaeval" else None,
            "opts": dict(j.opts) if j else None,
            "baseline": self.baseline.run_id if self.baseline else None,
        }


def _prompt_variant(job: EvalJob | None) -> str | None:
    """The value of the option that selects the task's prompt variant (its default when the job
    sets none); None for a task without variants."""
    if job is None:
        return None
    from clo.eval.task import get_task

    try:
        task = get_task(job.task)
    except KeyError:  # an unknown task: the checks say so
        return None
    return None if task.variant is None else job.opts.get(task.variant, task.option(task.variant).default)


def run_dir(grid_dir: Path, run: RunSpec) -> Path:
    return Path(grid_dir) / "runs" / run.run_id


def data_dir(grid_dir: Path, lang: str) -> Path:
    return Path(grid_dir) / "data" / lang


def instructions_path(grid_dir: Path, lang: str, instructions_file: str | None) -> Path:
    """Where the grid keeps the AlpacaEval instructions translated into ``lang``."""
    name = f"instructions_{lang}" if instructions_file is None else f"instructions_{lang}_{fingerprint(instructions_file)}"
    return Path(grid_dir) / "alpacaeval" / f"{name}.json"


# ---------------------------------------------------------------------------------------------
# Which evaluations a run has


def bind_jobs(run: RunSpec, jobs: list[EvalJob]) -> list[EvalJob]:
    """The jobs as they run for ``run``: for a multilingual run, a ``tgt`` job once per target
    language (:meth:`EvalJob.bind`); other jobs (and every job of a one-language run) as they are."""
    if not run.multilingual:
        return list(jobs)
    return [b for j in jobs for b in ([j.bind(c) for c in run.langs] if j.lang == "tgt" else [j])]


def run_jobs(grid: GridConfig, run: RunSpec, jobs: list[EvalJob] | None = None) -> list[EvalJob]:
    """The evaluations of ``run`` (of ``jobs``, default every job of the grid), bound to its languages."""
    return [j for j in bind_jobs(run, grid.jobs() if jobs is None else jobs) if _job_applies(grid, run, j)]


def _lang_applies(run: RunSpec, job: EvalJob) -> bool:
    """``only_langs``: a bound job's language; a job of a multilingual run in a fixed language
    runs when one of the run's languages is listed."""
    if job.only_langs is None:
        return True
    if run.multilingual:
        return (job._bound in job.only_langs) if job._bound else any(c in job.only_langs for c in run.langs)
    return run.lang in job.only_langs


def baseline_size(grid: GridConfig, size: int | None) -> int | None:
    """The size of the baseline run a run of ``size`` is compared with: the same size, or with
    ``baseline_size: largest`` the grid's largest (the whole split when the grid has it)."""
    if grid.baseline_size == "same":
        return size
    return None if None in grid.sizes else max(grid.sizes)


def _job_applies(grid: GridConfig, run: RunSpec, job: EvalJob) -> bool:
    if not _lang_applies(run, job):
        return False
    entry = next((m for m in grid.methods if m.name == run.variant), None) if run.method else None
    if entry is not None and entry.tasks is not None and job.task not in entry.tasks:
        return False  # a variant evaluated on some tasks only (Table 3's SFT-eng / SFT-tgt)
    # A pairwise task compares a trained run with the baseline (of the same size, or of the
    # largest: grid.baseline_size); the untrained model has no size and the baseline is not
    # compared with itself.
    if is_pairwise(job.task):
        return run.method is not None and not (
            run.variant == grid.baseline and run.size == baseline_size(grid, run.size))
    return True


def _translates(job: EvalJob, lang: str) -> bool:
    """Whether an AlpacaEval job in ``lang`` reads instructions the grid translates."""
    return job.task == "alpacaeval" and "translated_file" not in job.opts and lang != "en"


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


def held_out_prompts(grid: GridConfig, run: RunSpec, job: EvalJob) -> Path | None:
    """The held-out validation records of the job's language when its task reads them
    (:attr:`clo.eval.task.Task.reads_held_out`: fidelity in a language the benchmark has no prompts
    for, preference without a ``held_out_file`` of its own); else None."""
    from clo import languages
    from clo.eval.task import get_task

    try:
        task = get_task(job.task)
    except KeyError:  # an unknown task: the checks say so
        return None
    lang = job.resolve_lang(run.lang)
    if task.reads_held_out is None or not task.reads_held_out(languages.get(lang), job_data_dir(run, job), job.opts):
        return None
    if run.multilingual:  # one language's validation records (the data stage writes them)
        return data_dir(Path(grid.output_dir), run.lang) / f"validation_{lang if lang in run.langs else run.langs[0]}.jsonl"
    return data_dir(Path(grid.output_dir), run.lang) / "validation.jsonl"


def job_data_dir(run: RunSpec, job: EvalJob) -> Path | None:
    """The evaluation data directory of a job: its ``opts.data_dir``, else the run's ``eval.data_dir``."""
    d = job.opts.get("data_dir") or run.config.eval.data_dir
    return Path(d) if d else None


def plan(grid: GridConfig, runs: list[RunSpec] | None = None) -> dict:
    """What the grid expects: every run and, per run, every evaluation key."""
    runs = expand(grid) if runs is None else runs
    out = []
    for r in runs:
        jobs = run_jobs(grid, r)
        out.append({**r.describe(), "evals": [j.key(r.lang) for j in jobs],
                    "tasks": {j.key(r.lang): {"task": j.task, "lang": j.resolve_lang(r.lang)} for j in jobs}})
    return {"name": grid.name, "baseline": grid.baseline, "baseline_size": grid.baseline_size, "sizes": grid.sizes,
            "models": [m.name for m in grid.models],
            "langs": grid.langs, "variants": ([BASE_VARIANT] if grid.include_base else []) + [m.name for m in grid.methods],
            "runs": out}


# ---------------------------------------------------------------------------------------------
# What enters the fingerprints


def model_inputs(spec: str) -> dict:
    """The model as fingerprinted: what it is, not where it lies (:func:`clo.identity.model_identity`).
    A local directory is the digest of its files (a moved copy is the same model, weights swapped
    with the times preserved are another), a hub id the commit it resolves to. An offline name is
    its pinned package: the directory it converts to is written on first load, which planning a
    grid must not do."""
    from clo.models import OFFLINE_MODELS

    if spec in OFFLINE_MODELS:
        return {"model": {"offline": spec, "package": OFFLINE_MODELS[spec].pip}}
    from clo.identity import model_identity

    return {"model": model_identity(spec)}


def _local_model(spec: str) -> dict | None:
    """The content identity of a translation model that is a local directory, else None (an API
    model or a hub id, which the translator's settings name)."""
    from clo.models import OFFLINE_MODELS

    if spec in OFFLINE_MODELS or not Path(spec).expanduser().is_dir():
        return None
    from clo.identity import model_identity

    return model_identity(spec)


def _translator_inputs(cfg: Config) -> dict:
    """The evaluation sets' translator's settings (``eval.translator``, else ``data.translator``),
    and the translation model's identity when it is a directory."""
    translator = cfg.eval.translator or cfg.data.translator
    inputs: dict = {"translator": translator.model_dump(mode="json")}
    ident = _local_model(translator.model)
    if ident is not None:
        inputs["translator_model"] = ident
    return inputs


def data_build_inputs(lang: str, cfg: Config) -> dict:
    """The data build's fingerprinted inputs: the data config, the content of the file or
    directory ``data.path`` names in place of its path (a hub dataset id stays as it is), and the
    translation model's identity when it is a directory."""
    source = Path(cfg.data.path) if cfg.data.path else None
    local = source is not None and source.exists()
    data = cfg.data.model_dump(mode="json", exclude=_DATA_NOT_READ | ({"path"} if local else set()))
    inputs: dict = {"lang": lang, "data": data}
    if local:
        inputs["source"] = content_digest(source)
    ident = _local_model(cfg.data.translator.model)
    if ident is not None:
        inputs["translator_model"] = ident
    return inputs


def prebuilt_inputs(lang: str, cfg: Config, path: Path) -> dict:
    """A prebuilt dataset's fingerprinted inputs: its content and what the split reads
    (:func:`clo.experiments.grid.prebuilt_dataset`); no translator, no path."""
    d = cfg.data
    return {"lang": lang, "prebuilt": content_digest(path),
            "split": {"val_fraction": d.val_fraction, "seed": d.seed, "subsets": list(d.subsets)}}


def instructions_inputs(lang: str, cfg: Config, instructions_file: str | None, limit: int | None) -> dict:
    """The translated AlpacaEval instructions' inputs: the content of the instructions read (the
    job's file, else the evaluation data directory's; the hub file by name), the translator, the limit."""
    from clo.eval.alpacaeval import DATA_FILE

    path = Path(instructions_file) if instructions_file else (
        Path(cfg.eval.data_dir) / DATA_FILE if cfg.eval.data_dir else None)
    source = content_digest(path) if path is not None else {"hub": True}
    return {"lang": lang, "instructions": source, "limit": limit, **_translator_inputs(cfg)}


def with_file_digests(opts: dict) -> dict:
    """Options as fingerprinted: a value naming an existing file also carries its content's
    digest, so editing a prompts file reruns the evaluations that read it."""
    out = {}
    for k, v in opts.items():
        if isinstance(v, str) and Path(v).is_file():
            out[k] = {"path": v, "sha256": content_digest(v)["sha256"][:16]}
        else:
            out[k] = v
    return out


def _eval_settings(cfg: Config, task: str) -> dict:
    """The ``eval`` settings an evaluation reads: not the data directory (its files enter by
    content, :func:`eval_data_inputs`), not the settings only other tasks read
    (:attr:`clo.eval.task.Task.settings`), the judge's only for the judged tasks."""
    from clo.eval.task import tasks

    exclude = {"data_dir", *(s for t in tasks() if t.name != task for s in t.settings)}
    if not is_pairwise(task):
        exclude.add("judge")
    return cfg.eval.model_dump(mode="json", exclude=exclude)


def eval_data_inputs(task: str, lang: str, run: RunSpec, job: EvalJob) -> dict:
    """The evaluation data a job reads, by content: the digest of each file the task declares for
    ``lang`` under the job's data directory (:meth:`clo.eval.task.Task.files`), named relative to
    it, so that the directory may move; without a data directory, the hub dataset it reads."""
    from clo import languages
    from clo.eval.task import get_task

    t = get_task(task)
    ddir = job_data_dir(run, job)
    if ddir is None:
        return {"hub": t.hub}
    return {f.relative_to(ddir).as_posix(): content_digest(f) for f in t.files(languages.get(lang), ddir, job.opts)}


def _job_options(opts: dict) -> dict:
    """A job's options as fingerprinted: files by content (:func:`with_file_digests`), and no
    ``data_dir``, whose files :func:`eval_data_inputs` gives."""
    return with_file_digests({k: v for k, v in opts.items() if k != "data_dir"})


def _train_ignore() -> tuple[str, ...]:
    """Training settings that change how a run computes, not what (the trainer resumes a run with
    other values of them): changing one neither clears nor reruns a training."""
    from clo.train.trainer import OPERATIONAL_KEYS

    return tuple(f"train.{k}" for k in OPERATIONAL_KEYS)


def _eval_ignore() -> tuple[str, ...]:
    """Evaluation settings that change no result: the batch sizes and vLLM's resource settings
    (those :mod:`clo.eval.core` leaves out of its item cache's fingerprint, but for ``limit``,
    which changes the number of items), and ``eval.tasks`` (the grid's jobs say what runs)."""
    from clo.eval.core import NOT_IN_FINGERPRINT

    def flat(tree: dict, prefix: str) -> list[str]:
        return [k for name, v in tree.items()
                for k in (flat(v, f"{prefix}{name}.") if isinstance(v, dict) else [f"{prefix}{name}"])]

    return (*(k for k in flat(NOT_IN_FINGERPRINT, "eval.") if k != "eval.limit"), "opts.batch_size")


# ---------------------------------------------------------------------------------------------
# The list


def grid_stages(grid: GridConfig, runs: list[RunSpec] | None = None) -> list[Stage]:
    """Every stage of ``grid`` in the order the in-process grid runs them: data per language; per
    run its training, evaluations and samples; the AlpacaEval instructions per language; per run
    its pairwise evaluations (each preceded by the baseline's answers the first time they are
    needed); the report."""
    return _Builder(grid, expand(grid) if runs is None else runs).build()


class _Builder:
    def __init__(self, grid: GridConfig, runs: list[RunSpec]) -> None:
        self.grid, self.runs = grid, runs
        self.gdir = Path(grid.output_dir)
        jobs = grid.jobs()
        self.local = [j for j in jobs if not is_pairwise(j.task)]
        self.pairwise = [j for j in jobs if is_pairwise(j.task)]
        self.instructions: dict[tuple[str, str | None], Stage] = {}

    def build(self) -> list[Stage]:
        out = [self.data(lang) for lang in self.grid.langs]
        for run in self.runs:
            if run.method is not None:
                out.append(self.train(run))
            out += [self.evaluation(run, job) for job in run_jobs(self.grid, run, self.local)]
            if self.grid.samples:
                out.append(self.samples(run))
        out += self.translations()
        by_cell = {(r.model, r.lang, r.size, r.variant, r.seed): r for r in self.runs}
        outputs: set[tuple[str, str]] = set()
        for run in self.runs:
            for job in run_jobs(self.grid, run, self.pairwise):
                # Only runs with pairwise jobs have a baseline: the config refuses those jobs without one.
                base = by_cell[(run.model, run.lang, baseline_size(self.grid, run.size), self.grid.baseline,
                                run.seed)]
                if job.task == "alpacaeval" and (base.run_id, job.key(run.lang)) not in outputs:
                    outputs.add((base.run_id, job.key(run.lang)))
                    out.append(self.baseline_outputs(base, job, run))
                out.append(self.compared(run, job, base))
        out.append(self.report())
        return out

    # -- helpers -----------------------------------------------------------------------------

    def _cell(self, run: RunSpec) -> str:
        return f"pairwise/{run.model}/{run.lang}/n{'all' if run.size is None else run.size}"

    def _model(self, run: RunSpec) -> tuple[tuple[str, ...], Callable[[GridResult], tuple[str, str]]]:
        """(deps, state -> (model to evaluate, its fingerprint)) of a run."""
        if run.method is None:
            fp = fingerprint(model_inputs(run.model_spec))
            return (), lambda state: (run.model_spec, fp)
        name = f"train/{run.run_id}"
        return (name,), lambda state: (state.done[name][0]["checkpoint"], state.done[name][1])

    def _translated(self, job: EvalJob, lang: str) -> tuple[Stage, Path] | None:
        """(the stage translating the instructions ``job`` reads in ``lang``, their file), or None."""
        key = (lang, job.opts.get("instructions_file"))
        if not _translates(job, lang) or key not in self.instructions:
            return None
        return self.instructions[key], instructions_path(self.gdir, *key)

    def _outputs_file(self, base: RunSpec, job: EvalJob, lang: str) -> Path:
        """The baseline's AlpacaEval answers that the compared runs of its cell are judged against."""
        return run_dir(self.gdir, base) / "alpacaeval_outputs" / job.key(base.lang) / f"alpacaeval-outputs-{lang}.model_outputs.json"

    # -- the stages --------------------------------------------------------------------------

    def data(self, lang: str) -> Stage:
        cfg = next(r.config for r in self.runs if r.lang == lang)
        ddir = data_dir(self.gdir, lang)
        src = Path(self.grid.dataset[lang]) if self.grid.dataset else None

        def inputs(state) -> dict:
            return data_build_inputs(lang, cfg) if src is None else prebuilt_inputs(lang, cfg, src)

        def call(fns, state) -> Any:
            return fns.build_data(cfg, ddir) if src is None else fns.prebuilt(src, cfg, ddir)

        name = f"data/{lang}"
        return Stage(name, "data", "data", name, marker_path(ddir, "data"), inputs, call, key=name, lang=lang,
                     clear=(ddir,), keep=DATA_KEEP)

    def train(self, run: RunSpec) -> Stage:
        rdir, ddir = run_dir(self.gdir, run), data_dir(self.gdir, run.lang)
        data = f"data/{run.lang}"

        def inputs(state) -> dict:
            return {**model_inputs(run.model_spec), "lang": run.lang, "size": run.size, "data": state.done[data][1],
                    "train": run.config.train.model_dump(mode="json")}

        def call(fns, state) -> Any:
            return fns.train(run.config, training_file(run, ddir, state.done[data][0]), ddir / "validation.jsonl",
                             rdir / "train")

        name = f"train/{run.run_id}"
        return Stage(name, "train", "train", name, marker_path(rdir, "train"), inputs, call, key=run.run_id,
                     deps=(data,), lang=run.lang, run=run, clear=(rdir / "train",))

    def evaluation(self, run: RunSpec, job: EvalJob) -> Stage:
        deps, model = self._model(run)
        held_out = held_out_prompts(self.grid, run, job)
        if held_out is not None:
            deps = (*deps, f"data/{run.lang}")  # the prompts the data stage holds out
        return self._eval_stage("eval", f"eval/{run.run_id}", run, job, deps, model, lambda state: ({}, {}))

    def compared(self, run: RunSpec, job: EvalJob, base: RunSpec) -> Stage:
        deps, model = self._model(run)
        bdeps, bmodel = self._model(base)
        lang = job.resolve_lang(run.lang)
        translated = self._translated(job, lang)
        outputs = f"baseline-outputs/{base.run_id}/{job.key(base.lang)}" if job.task == "alpacaeval" else None
        deps = (*deps, *bdeps, *([outputs] if outputs else []), *([translated[0].name] if translated else []))

        def extra(state) -> tuple[dict, dict]:
            b_model, b_fp = bmodel(state)
            opts, fps = {}, {"baseline": b_fp}
            if translated is not None:
                opts["translated_file"] = str(translated[1])
                fps["instructions"] = state.done[translated[0].name][1]
            if outputs is None:
                return {"baseline": b_model, **opts}, fps
            return ({"baseline_outputs": str(self._outputs_file(base, job, lang)), **opts,
                     "baseline_name": job.opts.get("baseline_name", b_model)},
                    {**fps, "baseline_outputs": state.done[outputs][1]})

        return self._eval_stage("pairwise", self._cell(run), run, job, deps, model, extra, baseline=base)

    def _eval_stage(self, kind: str, group: str, run: RunSpec, job: EvalJob, deps: tuple[str, ...],
                    model: Callable, extra: Callable[[GridResult], tuple[dict, dict]],
                    baseline: RunSpec | None = None) -> Stage:
        rdir = run_dir(self.gdir, run)
        lang, key = job.resolve_lang(run.lang), job.key(run.lang)
        out_dir = rdir / "eval" / key
        held_out = held_out_prompts(self.grid, run, job)

        def prepared(state) -> tuple[dict, dict]:
            opts, fps = extra(state)
            if held_out is not None:
                # Languages without Language Confusion Benchmark prompts (sw, yo): the run's held-out
                # validation prompts. Their content is an input (the untrained model's fingerprint
                # does not carry the data's); the path is not, so that the grid directory may move.
                opts = {**opts, "held_out_file": str(held_out)}
                fps = {**fps, "held_out": content_digest(held_out).get("sha256", "missing")}
            return opts, fps

        def inputs(state) -> dict:
            return {"model": model(state)[1], "task": job.task, "lang": lang, "opts": _job_options(job.opts),
                    "eval": _eval_settings(run.config, job.task),
                    "data": eval_data_inputs(job.task, lang, run, job), **prepared(state)[1]}

        def call(fns, state) -> Any:
            return fns.evaluate(job.task, model(state)[0], run.config, out_dir,
                                {**job.opts, "lang": lang, **prepared(state)[0]})

        def after(state, result: Any) -> None:
            trained = model(state)[0]
            if isinstance(result, dict) and (Path(trained) / "trainer_state.json").is_file():
                from clo.train.card import add_eval_results

                add_eval_results(trained, job.task, lang, result)  # the trained model's card lists its results

        return Stage(f"eval/{run.run_id}/{key}", kind, kind, group if kind == "pairwise" else f"eval/{run.run_id}",
                     marker_path(rdir / "eval", key), inputs, call, key=run.run_id, deps=deps, lang=lang, run=run,
                     job=job, eval_key=key, baseline=baseline, clear=(out_dir,), after=after)

    def samples(self, run: RunSpec) -> Stage:
        deps, model = self._model(run)
        rdir, prompts = run_dir(self.gdir, run), self.grid.samples

        def inputs(state) -> dict:
            return {"model": model(state)[1], "prompts": prompts, "max_new_tokens": run.config.eval.max_new_tokens}

        def call(fns, state) -> Any:
            return _write_samples(rdir, prompts, fns.samples(model(state)[0], run.config, prompts))

        return Stage(f"samples/{run.run_id}", "samples", "eval", f"eval/{run.run_id}", marker_path(rdir, "samples"),
                     inputs, call, key=run.run_id, deps=deps, lang=run.lang, run=run, clear=(rdir / "samples.json",))

    def translations(self) -> list[Stage]:
        """The AlpacaEval instructions of each (language, instructions file) the pairwise jobs read
        in translation: once per grid, shared by every run of the language."""
        out = []
        for job in self.pairwise:
            for r in self.runs:
                for bj in run_jobs(self.grid, r, [job]):
                    key = (bj.resolve_lang(r.lang), bj.opts.get("instructions_file"))
                    if not _translates(bj, key[0]) or key in self.instructions:
                        continue
                    self.instructions[key] = stage = self.translation(key, bj, r.config)
                    out.append(stage)
        return out

    def translation(self, key: tuple[str, str | None], job: EvalJob, cfg: Config) -> Stage:
        """The instructions of ``key`` (language, file), translated with the first run's translator
        (``data`` is shared by the grid)."""
        lang, file = key
        # Only the instructions the jobs use: the largest limit of those sharing this file.
        limit = _instructions_limit(self.grid, self.pairwise, self.runs, key)
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"limit": limit})})
        path = instructions_path(self.gdir, lang, file)
        name = f"instructions/{path.stem}"
        return Stage(name, "instructions", "data", name, path.with_suffix(".done.json"),
                     lambda state: instructions_inputs(lang, cfg, file, limit),
                     lambda fns, state: fns.translate_instructions(cfg, lang, path, file),
                     key=f"instructions/{lang}", lang=lang, job=job,
                     clear=(path,))  # not its .sqlite: translations are keyed by translator and text

    def baseline_outputs(self, base: RunSpec, job: EvalJob, first: RunSpec) -> Stage:
        """The baseline's AlpacaEval answers, generated once per cell and job, then judged against
        every compared run of the cell (not regenerated per comparison)."""
        deps, model = self._model(base)
        lang, key = job.resolve_lang(first.lang), job.key(first.lang)
        translated = self._translated(job, lang)
        if translated is not None:
            deps = (*deps, translated[0].name)
        bdir = run_dir(self.gdir, base) / "alpacaeval_outputs"
        job_opts = {k: v for k, v in job.opts.items() if k in _OUTPUTS_OPTIONS}

        def translation(state) -> tuple[dict, dict]:
            if translated is None:
                return {}, {}
            return {"translated_file": str(translated[1])}, {"instructions": state.done[translated[0].name][1]}

        def inputs(state) -> dict:
            return {"model": model(state)[1], "task": "alpacaeval-outputs", "lang": lang,
                    "opts": _job_options(job_opts), "eval": _eval_settings(base.config, "alpacaeval-outputs"),
                    "data": eval_data_inputs("alpacaeval-outputs", lang, base, job), **translation(state)[1]}

        def call(fns, state) -> Any:
            return fns.evaluate("alpacaeval-outputs", model(state)[0], base.config, bdir / key,
                                {**job_opts, "lang": lang, **translation(state)[0]})

        return Stage(f"baseline-outputs/{base.run_id}/{key}", "baseline-outputs", "pairwise", self._cell(first),
                     marker_path(bdir, key), inputs, call, key=f"baseline-outputs/{base.run_id}/{key}", deps=deps,
                     lang=lang, run=base, job=job, eval_key=key, clear=(bdir / key,))

    def report(self) -> Stage:
        the_plan = fingerprint(plan(self.grid, self.runs))

        def inputs(state) -> dict:
            # A job of a launcher knows other jobs' failures as stages not done: the same keys.
            evals = sorted(f"{s.run.run_id}:{s.eval_key}:{state.done[s.name][1]}" for s in state.stages
                           if s.kind in ("eval", "pairwise") and s.name in state.done)
            return {"evals": evals, "failures": sorted(set(state.failures) | set(state.pending)), "plan": the_plan}

        gdir = self.gdir
        return Stage("report", "report", "report", "report", marker_path(gdir / "report", "report"), inputs,
                     lambda fns, state: fns.report(gdir), key="report", clear=(gdir / "report",))


def training_file(run: RunSpec, ddir: Path, data_result: Any) -> Path:
    """The training records of ``run``: the whole split, or the nested subset of its size."""
    train_path = ddir / "train.jsonl" if run.size is None else ddir / "subsets" / f"train_{run.size}.jsonl"
    n_train = data_result.get("train") if isinstance(data_result, dict) else None  # as build_dataset's summary
    if not train_path.is_file() and run.size is not None and n_train and run.size >= n_train:
        # The build names the largest subset after the training set's real size (6400 requested,
        # 6080 left after validation and checks): that is the whole training split.
        log.warning("%s: size %d >= the %d training records; training on all of them", run.run_id, run.size, n_train)
        train_path = ddir / "train.jsonl"
    if not train_path.is_file():
        raise FileNotFoundError(f"{train_path}: no training subset of size {run.size} (the dataset has "
                                f"{n_train if n_train is not None else '?'} training records)")
    return train_path


def _write_samples(rdir: Path, prompts: list[str], answers: list[str]) -> dict:
    if len(answers) != len(prompts):
        raise ValueError(f"samples: {len(prompts)} prompts but {len(answers)} answers")
    write_json(rdir / "samples.json", [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)])
    return {"n": len(prompts)}


__all__ = ["DATA_KEEP", "PHASES", "Stage", "bind_jobs", "data_build_inputs", "data_dir", "grid_stages",
           "held_out_prompts", "instructions_inputs", "instructions_path", "job_data_dir",
           "model_inputs", "plan", "prebuilt_inputs", "run_dir", "run_jobs", "training_file", "with_file_digests"]
