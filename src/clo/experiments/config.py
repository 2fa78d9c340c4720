"""The grid config: one base :class:`clo.config.Config` and the axes models × langs × methods × sizes.

YAML in, validated as a whole; every problem names the file and the dotted key
(``configs/grid.yaml: methods.2.set: train.trainable: ...``). A grid expands into
:class:`RunSpec` s, one per cell, each with the fully resolved :class:`Config` it trains and
evaluates with::

    name: paper-de
    output_dir: runs/paper-de
    base:                       # a clo.config.Config: defaults for every run
      train: {batch_size: 8}
      eval: {tasks: [belebele, mmmlu, fidelity]}
    models: [meta-llama/Meta-Llama-3-8B]
    langs: [de, zh, [de, zh]]   # a list entry: one run on both languages at once (run id de+zh)
    methods:
      - sft
      - clo
      - {name: clo-full, method: clo, set: {train.trainable: full}}
    sizes: [null]               # null: the whole training split; integers: data.subsets sizes
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from clo import languages
from clo.config import Config, config_from_dict, load_yaml, parse_override, set_dotted
from clo.config_base import ConfigError, StrictModel, registered
from clo.train.config import TrainConfig

#: The untrained starting model, evaluated once per (model, lang) so tables show where each
#: method started from.
BASE_VARIANT = "base"

METHODS: tuple[str, ...] = get_args(TrainConfig.model_fields["method"].annotation)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class MethodVariant(StrictModel):
    """One value of the methods axis: a training method plus config overrides (the ablations)."""

    name: str = Field(description="run-directory and report name, e.g. clo-full")
    method: str = Field(description="train.method of this variant")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted overrides, e.g. train.trainable: full")
    tasks: list[str] | None = Field(None, description="evaluate this variant only on these tasks (e.g. [mmmlu]: "
                                    "the paper's Table 3 rows SFT-eng and SFT-tgt); null: every eval job")
    only_langs: list[str] | None = Field(None, description="train this variant only for these target languages "
                                         "(e.g. [zh, ko, sw]); null: every language of the grid")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _NAME_RE.match(v) or v == BASE_VARIANT:
            raise ValueError(
                f"variant name {v!r} must be letters, digits, _ . + - (not {BASE_VARIANT!r}, which is the untrained model)"
            )
        return v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        return registered(v, METHODS, "method")

    @field_validator("set")
    @classmethod
    def _no_shared_sections(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            head = key.split(".")[0]
            # The dataset is built once per language and shared by every method and size, so a
            # variant cannot change it; the model and language are axes of their own.
            if head in ("data", "model", "lang", "output_dir"):
                raise ValueError(f"{key}: a method variant may not override {head!r} (it is shared across the grid)")
            if key in ("train.method",):
                raise ValueError(f"{key}: set the variant's 'method' instead")
        return v


def known_task(name: str) -> str:
    """``name`` when it is a registered evaluation task (:mod:`clo.eval.task`), else a ValueError
    naming the closest one."""
    from clo.eval.task import get_task

    try:
        get_task(name)
    except KeyError as e:
        raise ValueError(str(e)) from None
    return name


class EvalJob(StrictModel):
    """One evaluation of every run: a task in one language (``tgt``: the run's target language)."""

    task: str
    lang: str = Field("tgt", description="tgt, en or an ISO 639-1 code")
    opts: dict[str, Any] = Field(default_factory=dict, description="extra keyword options of clo.eval.evaluate")
    only_langs: list[str] | None = Field(
        None, description="run only for these target languages (e.g. the benchmark has no data for the others)"
    )
    # A ``tgt`` job of a run with several target languages runs once per language: bound to it.
    _bound: str | None = PrivateAttr(None)

    def bind(self, code: str) -> EvalJob:
        """This job for one target language of a multilingual run (``key`` and ``resolve_lang``
        give that language); it still equals the job of the grid it came from."""
        job = self.model_copy()
        job._bound = code
        return job

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EvalJob):
            return NotImplemented
        return (self.task, self.lang, self.opts, self.only_langs) == (other.task, other.lang, other.opts,
                                                                      other.only_langs)

    @field_validator("opts")
    @classmethod
    def _safe_output_name(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "name" in v:  # the evaluation's output file name: it must not reach outside the run directory
            from clo.paths import safe_name

            safe_name(v["name"], "opts.name")
        return v

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        return known_task(v)

    @field_validator("only_langs")
    @classmethod
    def _known_langs(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        try:
            return [languages.get(c).code for c in v]
        except KeyError as e:
            raise ValueError(e.args[0]) from None

    @field_validator("lang")
    @classmethod
    def _known_lang(cls, v: str) -> str:
        if v == "tgt":
            return v
        try:
            return languages.get(v).code
        except KeyError as e:
            raise ValueError(e.args[0]) from None

    def resolve_lang(self, tgt: str) -> str:
        if self.lang != "tgt":
            return self.lang
        return self._bound or tgt

    def key(self, tgt: str) -> str:
        """``belebele_de``: the job's directory name and its metrics key in reports."""
        return f"{self.task}_{self.resolve_lang(tgt)}"


class ModelEntry(StrictModel):
    name: str = Field(description="short name used in run directories and tables")
    spec: str = Field(description="hub id, local directory or offline model name")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"model name {v!r} must be letters, digits, _ . + -")
        return v


def model_slug(spec: str) -> str:
    """Directory-safe short name of a model spec: hub ``org/name`` -> ``name``, a path -> its basename."""
    tail = Path(spec.rstrip("/")).name if ("/" in spec or Path(spec).exists()) else spec
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", tail) or "model"


class StageResources(StrictModel):
    """What each job of one stage asks the cluster for (``launcher.stages.<stage>``)."""

    gpus_per_node: int = Field(1, ge=0)
    nodes: int = Field(1, ge=1, description="more than 1: only for train (accelerate launch across the nodes)")
    cpus_per_task: int = Field(8, ge=1)
    mem_gb: float | None = Field(None, gt=0, description="None: the partition's default")
    timeout_min: int = Field(240, gt=0, description="Slurm time limit of each job, minutes")
    partition: str | None = Field(None, description="overrides launcher.partition for this stage")
    additional_parameters: dict[str, Any] = Field(
        default_factory=dict, description="more sbatch options for this stage, e.g. {constraint: h100}")


def _resources(**kw: Any) -> Any:
    return Field(default_factory=lambda: StageResources(**kw))


class LauncherStages(StrictModel):
    """Resources per stage: one job per language (data: the translation, also of the AlpacaEval
    instructions), per trained run (train), per run (eval: its evaluations that need no other run),
    per cell of model, language and size (pairwise: judged comparisons with the baseline), one report."""

    data: StageResources = _resources(gpus_per_node=1, timeout_min=240)
    train: StageResources = _resources(gpus_per_node=1, timeout_min=720, cpus_per_task=16)
    eval: StageResources = _resources(gpus_per_node=1, timeout_min=480)
    pairwise: StageResources = _resources(gpus_per_node=1, timeout_min=480)
    report: StageResources = _resources(gpus_per_node=0, cpus_per_task=2, timeout_min=30)

    @model_validator(mode="after")
    def _one_node(self) -> LauncherStages:
        for name in ("data", "eval", "pairwise", "report"):
            if getattr(self, name).nodes != 1:
                raise ValueError(f"{name}.nodes: only train jobs span several nodes")
        return self


#: The names ``launcher.kind`` accepts: :func:`clo.experiments.launchers.register_launcher` adds
#: each launcher's (the built-in ones are known before that module is imported).
LAUNCHER_KINDS: set[str] = {"local", "slurm"}


class LauncherConfig(StrictModel):
    """How ``clo run`` runs the stages (``--launcher`` overrides ``kind``)."""

    kind: str = Field("local", description="local: every stage in this process; slurm: each stage a Slurm job")
    executor: Literal["slurm", "local", "debug"] = Field(
        "slurm", description="submitit executor of kind slurm; local and debug run the jobs on this machine, "
                             "one after another (tests, a single machine)")
    folder: str | None = Field(None, description="submitit's job files and logs; None: <output_dir>/slurm")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    setup: list[str] = Field(default_factory=list,
                             description="shell lines each job runs first, e.g. 'source .venv/bin/activate'")
    additional_parameters: dict[str, Any] = Field(default_factory=dict, description="more sbatch options for every job")
    accelerate_config: str | None = Field(
        None, description="accelerate config file of the training jobs (e.g. configs/accelerate/fsdp.yaml); "
                          "processes and machines come from launcher.stages.train")
    main_process_port: int = Field(29500, gt=0, lt=65536, description="rendezvous port of multi-node training")
    stages: LauncherStages = Field(default_factory=LauncherStages)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return registered(v, sorted(LAUNCHER_KINDS), "launcher")


class GridConfig(StrictModel):
    name: str = "grid"
    output_dir: str = Field("runs/grid", description="the grid directory: data/, runs/, report/")
    base: Config = Field(default_factory=Config, description="defaults of every run")
    models: list[ModelEntry] = Field(min_length=1)
    langs: list[str] = Field(min_length=1)
    methods: list[MethodVariant] = Field(min_length=1)
    sizes: list[int | None] = Field(default_factory=lambda: [None], min_length=1)
    include_base: bool = Field(True, description="also evaluate each untrained model (variant 'base')")
    baseline: str = Field("sft", description="variant that pairwise win rates compare against")
    seeds: list[int] | None = Field(
        None, description="training seeds: each trained run once per seed (train.seed), run ids ending in /s<seed>; "
        "reports show mean ± SD over the seeds; null: one run with train.seed")
    baseline_size: Literal["same", "largest"] = Field(
        "same", description="the baseline's size in pairwise comparisons: same (each size against the baseline "
        "of that size) or largest (every size, the baseline's smaller sizes included, against the baseline at "
        "the grid's largest size: the paper's Figures 3 and 5)")
    eval_jobs: list[EvalJob] | None = Field(
        None, description="None: every base.eval.tasks entry in the target language"
    )
    dataset: dict[str, str] | None = Field(
        None, description="prebuilt cross-lingual JSONL per language, used instead of building the data"
    )
    samples: list[str] = Field(default_factory=list, description="prompts answered side by side by every model")
    launcher: LauncherConfig = Field(default_factory=LauncherConfig, description="where the stages run")

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        return [{"name": model_slug(m), "spec": m} if isinstance(m, str) else m for m in v]

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        return [{"name": m, "method": m} if isinstance(m, str) else m for m in v]

    @field_validator("langs", mode="before")
    @classmethod
    def _lang_lists(cls, v: Any) -> Any:
        # [sw, yo] (a run on both languages) is the entry "sw+yo": its data and run directories' name.
        if not isinstance(v, list):
            return v
        return ["+".join(str(c) for c in e) if isinstance(e, list) else e for e in v]

    @field_validator("langs")
    @classmethod
    def _langs(cls, v: list[str]) -> list[str]:
        out = []
        for entry in v:
            try:
                codes = [languages.get(code).code for code in entry.split("+")]
            except KeyError as e:
                raise ValueError(e.args[0]) from None
            if len(codes) > 1 and (len(set(codes)) != len(codes) or "en" in codes):
                raise ValueError(f"{entry}: a multilingual entry names distinct target languages, not en")
            out.append("+".join(codes))
        return out

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"seeds must be distinct and at least one, got {v}")
        return v

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[int | None]) -> list[int | None]:
        for s in v:
            if s is not None and s <= 0:
                raise ValueError(f"size {s} must be positive (or null for the whole training split)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> GridConfig:
        axis_owned = {"model": "models", "lang": "langs", "output_dir": "output_dir"}
        for key in sorted(set(axis_owned) & self.base.model_fields_set):
            raise ValueError(f"base.{key}: set by the grid ({axis_owned[key]}), not in base; remove it")
        for axis, names in (
            ("models", [m.name for m in self.models]),
            ("langs", self.langs),
            ("methods", [m.name for m in self.methods]),
            ("sizes", self.sizes),
        ):
            dups = sorted({str(n) for n in names if names.count(n) > 1})
            if dups:
                raise ValueError(f"{axis}: duplicate entries {dups}")
        for s in self.sizes:
            if s is not None and s not in self.base.data.subsets:
                raise ValueError(
                    f"sizes: {s} is not one of base.data.subsets {self.base.data.subsets} "
                    "(runs train on the nested subsets the data stage writes)"
                )
        if self.eval_jobs is None:  # the jobs are base.eval.tasks: each a registered task
            for i, task in enumerate(self.base.eval.tasks):
                try:
                    known_task(task)
                except ValueError as e:
                    raise ValueError(f"base.eval.tasks.{i}: {e}") from None
        # The baseline is a method of the grid: checked whenever it is set (a typo would otherwise
        # surface only as missing win rates), and when pairwise tasks compare against it.
        from clo.eval.task import is_pairwise

        needs_pairwise = any(is_pairwise(j.task) for j in self.jobs())
        names = [m.name for m in self.methods]
        if (needs_pairwise or "baseline" in self.model_fields_set) and self.baseline not in names:
            raise ValueError(f"baseline: {self.baseline!r} is not one of the methods ({', '.join(names)})"
                             + ("; pairwise tasks need it" if needs_pairwise else ""))
        if self.dataset is not None:
            missing = [lang for lang in self.langs if lang not in self.dataset]
            if missing:
                raise ValueError(f"dataset: no prebuilt file for {missing} (give one per language or none)")
        return self

    def jobs(self) -> list[EvalJob]:
        if self.eval_jobs is not None:
            return list(self.eval_jobs)
        return [EvalJob(task=t) for t in self.base.eval.tasks]

    def variant(self, name: str) -> MethodVariant:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(name)


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid, with the config it trains and evaluates with."""

    model: str  # ModelEntry.name
    model_spec: str
    lang: str
    variant: str
    method: str | None  # None: the untrained base model
    size: int | None
    config: Config
    ablation: bool = False  # a variant with config overrides (Tables 4 and 5), not a main method
    seed: int | None = None  # the training seed of a grid with a ``seeds`` axis (None: the config's)

    @property
    def langs(self) -> list[str]:
        """The run's target languages: one, or those of a multilingual entry (``sw+yo``)."""
        return self.lang.split("+")

    @property
    def multilingual(self) -> bool:
        return "+" in self.lang

    @property
    def run_id(self) -> str:
        size = "all" if self.size is None else str(self.size)
        if self.method is None:
            return f"{self.model}/{self.lang}/{BASE_VARIANT}"
        return f"{self.model}/{self.lang}/{self.variant}/n{size}" + ("" if self.seed is None else f"/s{self.seed}")

    def describe(self) -> dict:
        return {
            "run_id": self.run_id, "model": self.model, "model_spec": self.model_spec, "lang": self.lang,
            "variant": self.variant, "method": self.method, "size": self.size,
            "trainable": self.config.train.trainable if self.method else None,
            "nll_langs": list(self.config.train.nll_langs) if self.method else None,
            "ablation": self.ablation,
            **({"langs": self.langs} if self.multilingual else {}),
            **({"seed": self.seed} if self.seed is not None else {}),
        }


def expand(grid: GridConfig, source: str = "<grid>") -> list[RunSpec]:
    """Every run of the grid, base-model runs first; each run's config fully validated."""
    runs: list[RunSpec] = []
    base_tree = grid.base.model_dump(mode="json")
    for model in grid.models:
        for lang in grid.langs:
            tree = copy.deepcopy(base_tree)
            tree.update(model=model.spec, lang=lang)
            if grid.include_base:
                runs.append(RunSpec(model.name, model.spec, lang, BASE_VARIANT, None, None,
                                    config_from_dict(tree, source)))
            for i, variant in enumerate(grid.methods):
                if variant.only_langs is not None and lang not in variant.only_langs:
                    continue
                vtree = copy.deepcopy(tree)
                vtree["train"]["method"] = variant.method
                for key, value in variant.set.items():
                    set_dotted(vtree, key, value, f"{source}: methods.{i}.set")
                cfg = config_from_dict(vtree, f"{source}: methods.{i} ({variant.name})")
                # A seeds axis: one run per training seed (reports show mean ± SD over them).
                seeded = {None: cfg} if not grid.seeds else {
                    s: cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": s})}) for s in grid.seeds}
                for size in grid.sizes:
                    for seed, scfg in seeded.items():
                        runs.append(RunSpec(model.name, model.spec, lang, variant.name, variant.method, size, scfg,
                                            ablation=bool(variant.set), seed=seed))
    return runs


def _format(err: ValidationError, source: str, overridden=()) -> str:
    from clo.config import error_source
    from clo.config_base import unknown_key_message

    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = unknown_key_message(GridConfig, e["loc"]) if e["type"] == "extra_forbidden" else e["msg"]
        source_ = error_source(e["loc"], source, overridden)
        if key == "<root>":
            # whole-grid checks name their keys themselves ("sizes: 5 is not one of ...")
            lines.append(f"{source_}: {msg.removeprefix('Value error, ')}")
        else:
            lines.append(f"{source_}: {key}: {msg}")
    return "\n".join(lines)


def grid_from_dict(tree: dict, source: str = "<dict>", overrides: Iterable[str] = ()) -> GridConfig:
    tree = copy.deepcopy(dict(tree or {}))
    overridden = []
    for ov in overrides:
        path, value = parse_override(ov)
        set_dotted(tree, ".".join(path), value, f"--set {ov}")
        overridden.append((path, f"--set {ov}"))
    try:
        grid = GridConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format(e, source, overridden)) from None
    expand(grid, source)  # surfaces a bad variant override now, not hours into the grid
    return grid


def load_grid(path: str | Path, overrides: Iterable[str] = ()) -> GridConfig:
    """A grid YAML file, with ``--set`` overrides (``--set sizes=[200] --set base.train.lr=1e-4``).

    Relative paths in ``dataset`` are read relative to the YAML file's directory.
    """
    path = Path(path)
    tree = load_yaml(path)
    grid = grid_from_dict(tree, str(path), overrides)
    if grid.dataset:
        grid.dataset = {
            lang: str(p if Path(p).is_absolute() else (path.parent / p)) for lang, p in grid.dataset.items()
        }
    return grid


def dump_grid(grid: GridConfig) -> str:
    return yaml.safe_dump(grid.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


__all__ = [
    "BASE_VARIANT", "LAUNCHER_KINDS", "METHODS", "EvalJob", "GridConfig", "LauncherConfig", "MethodVariant",
    "ModelEntry", "RunSpec", "StageResources", "dump_grid", "expand", "grid_from_dict", "load_grid", "model_slug",
]
