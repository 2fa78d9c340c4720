"""An evaluation task as one object, and the registry of them.

A :class:`Task` declares in one place everything clo needs to know about an evaluation besides
running it: its name and help, the data files it reads under the data directory for a language,
what a run in a language lacks (the check a grid runs before it starts), how many items it has,
its command-line options and the option that selects a prompt variant (and so the output file).
``clo eval``'s subcommands, the grid's checks (:mod:`clo.experiments.preflight`) and its estimate
(:mod:`clo.experiments.estimate`) all read these declarations; none of them knows a task by name.

A task is one module that builds a :class:`Task` around its run function and registers it::

    from clo.eval.task import Option, Task, register

    def run(ctx, *, limit=None, style="plain"):   # -> clo.eval.core.TaskResult
        ...

    register(Task("mytask", "what it measures", run, data_files=lambda lang, opts: [f"mine/{lang.code}.jsonl"],
                  options=(Option("style", "prompt style", choices=("plain", "chat"), default="plain"),),
                  variant="style"))

The built-in tasks live in the modules of :data:`BUILTIN_MODULES`, imported on the first look-up
(not before: ``clo --help`` imports none of them); a task registered by any other module is
known from the moment that module is imported, and is listed like the built-in ones.
"""

from __future__ import annotations

import csv
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clo.registry import Registry

if TYPE_CHECKING:
    from clo.eval.core import TaskResult
    from clo.languages import Language

__all__ = ["BUILTIN_MODULES", "MAX_NEW_TOKENS", "TASKS", "Option", "Task", "count_csv_rows", "count_lines",
           "get_task", "is_pairwise", "register", "tasks"]

#: ``(lang, data_dir or None, options) -> message or None``: what a run lacks.
MissingData = Callable[["Language", "Path | None", dict], "str | None"]
#: ``(lang, data_dir or None, options, assumed) -> items or None``: see :attr:`Task.count_items`.
CountItems = Callable[["Language", "Path | None", dict, Mapping[str, float]], "int | None"]


@dataclass(frozen=True)
class Option:
    """A task option that ``clo eval TASK`` takes as a flag (``--prompts-file`` for
    ``prompts_file``; ``type=bool``: a flag without value) and passes to the run function as the
    keyword ``name``; with ``passed=False`` only the task's :attr:`Task.incomplete` sees it."""

    name: str
    help: str
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    default: Any = None  # the run function's default; a variant's default adds nothing to the output name
    metavar: str | None = None
    passed: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


#: The generation length of the generative tasks, an ``eval`` setting they override per run.
MAX_NEW_TOKENS = Option("max_new_tokens", "generation length (default: eval.max_new_tokens)", int, metavar="N")


def _no_files(lang: Language, opts: dict) -> list[str]:
    return []


def _nothing_missing(lang: Language, data_dir: Path | None, opts: dict) -> str | None:
    return None


def _uncounted(lang: Language, data_dir: Path | None, opts: dict, assumed: Mapping[str, float]) -> int | None:
    return None


@dataclass(frozen=True)
class Task:
    """One evaluation: its declarations and its run function.

    - ``run(ctx, **options) -> TaskResult``: the evaluation itself (:func:`clo.eval.core.evaluate`
      calls it with a :class:`clo.eval.core.TaskContext`).
    - ``data_files(lang, options)``: the files it reads for ``lang``, relative to the data directory
      (``eval.data_dir``), as glob patterns (``language_confusion/monolingual/*/de.csv``). Their
      content digests key its item cache, so an edited file reruns the evaluation.
    - ``hub``: the hub dataset read instead of those files when there is no data directory (None:
      a task that reads no hub dataset).
    - ``missing_data(lang, data_dir, options)``: what a run in ``lang`` lacks, as a one-line
      message, or None; asked before a grid spends anything. ``data_dir`` is None when the data
      is read from the hub.
    - ``count_items(lang, data_dir, options, assumed)``: how many items a run has before any
      limit, counted in the local data where it is there, else taken from ``assumed`` (the full
      test sets' sizes of the estimate's assumptions, ``items:``); None when unknown.
    - ``options``: its command-line options (:class:`Option`); ``variant``: the name of the
      option that selects a prompt variant or split, whose value other than its default is
      appended to the output name (``belebele-en-harness``).
    - ``settings``: the ``eval`` settings only this task reads: left out of the other tasks'
      item-cache fingerprints, so that changing one reruns only this task.
    - ``reads_held_out(lang, data_dir, options)``: whether a run takes its prompts or items
      from held-out cross-lingual records (the ``held_out_file`` option), which a grid supplies
      from its data stage (the validation records of the run's language); None for a task that
      never does.
    - ``pairwise``: whether a run compares a model's answers with a baseline's (the ``baseline``
      option): a grid runs it for trained runs only, against its ``baseline`` method.
    - ``incomplete(metrics, options)``: why a finished result is not one to accept silently (a
      one-line message: ``clo eval`` prints it and exits 3), or None; ``options`` are those given
      on the command line.
    """

    name: str
    help: str
    run: Callable[..., TaskResult]
    data_files: Callable[[Language, dict], Sequence[str]] = _no_files
    hub: str | None = None
    missing_data: MissingData = _nothing_missing
    count_items: CountItems = _uncounted
    options: tuple[Option, ...] = ()
    variant: str | None = None
    settings: tuple[str, ...] = ()
    reads_held_out: Callable[[Language, Path | None, dict], bool] | None = None
    pairwise: bool = False
    incomplete: Callable[[dict, dict], str | None] | None = None

    def __post_init__(self) -> None:
        names = [o.name for o in self.options]
        if len(set(names)) != len(names):
            raise ValueError(f"task {self.name!r}: an option is declared twice: {', '.join(names)}")
        if self.variant is not None and self.variant not in names:
            raise ValueError(f"task {self.name!r}: variant {self.variant!r} is not one of its options "
                             f"({', '.join(names) or 'none'})")

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def output_name(self, lang: str, options: Mapping[str, Any]) -> str:
        """The stem of the result files: ``<task>-<lang>``, plus ``-<variant>`` for a variant other
        than the default."""
        name = f"{self.name}-{lang}"
        if self.variant is None:
            return name
        default = self.option(self.variant).default
        value = options.get(self.variant, default)
        return name if value is None or value == default else f"{name}-{value}"

    def files(self, lang: Language, data_dir: Path | None, options: Mapping[str, Any]) -> list[Path]:
        """The paths under ``data_dir`` that a run in ``lang`` reads (patterns expanded, each in
        sorted order; a plain path whether or not it exists); none without a data directory."""
        if data_dir is None:
            return []
        data_dir = Path(data_dir)
        out: list[Path] = []
        for pattern in self.data_files(lang, dict(options)):
            if any(c in pattern for c in "*?["):
                out += sorted(data_dir.glob(pattern))
            else:
                out.append(data_dir / pattern)
        return out

    def item_count(self, lang: Language, data_dir: Path | None, options: Mapping[str, Any], *,
                   limit: int | None = None, assumed: Mapping[str, float] | None = None) -> int:
        """Items of a run in ``lang`` with ``limit`` applied (0 when they cannot be known)."""
        n = self.count_items(lang, data_dir, dict(options), assumed or {}) or 0
        return min(n, limit) if limit else n


# ---------------------------------------------------------------------------------------------
# The registry

TASKS: Registry[Task] = Registry("evaluation task")

#: The modules of clo's own tasks, each registering its tasks when imported.
BUILTIN_MODULES = ("clo.eval.belebele", "clo.eval.mmmlu", "clo.eval.alpacaeval", "clo.eval.fidelity",
                   "clo.eval.preference")
_loaded = False


def register(task: Task, *, replace: bool = False) -> Task:
    """Add ``task`` to the registry; a name already taken is an error unless ``replace``."""
    TASKS.register(task.name, task, replace=replace)
    return task


def _load_builtin() -> None:
    # By name: the registry is imported by every task module, and must not import them back.
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def get_task(name: str) -> Task:
    """The task registered as ``name``; an unknown name is a :class:`clo.registry.UnknownName`
    (a ``KeyError``) naming the closest known one."""
    _load_builtin()
    return TASKS.get(name)


def is_pairwise(name: str) -> bool:
    """Whether the task ``name`` compares with a baseline (:attr:`Task.pairwise`); False for an
    unknown name (the checks that know tasks say so)."""
    try:
        return get_task(name).pairwise
    except KeyError:
        return False


def tasks() -> list[Task]:
    """Every registered task: clo's own first, in the order of :data:`BUILTIN_MODULES`, then the
    others in registration order."""
    _load_builtin()
    # A task module imported before the first look-up (``import clo.eval.mmmlu``) registers first;
    # the listing (CLI choices, help) must not depend on which module a program imported first.
    def rank(task: Task) -> int:
        module = getattr(task.run, "__module__", "")
        return BUILTIN_MODULES.index(module) if module in BUILTIN_MODULES else len(BUILTIN_MODULES)

    return sorted(TASKS.values(), key=rank)


# ---------------------------------------------------------------------------------------------
# Counting items in local files (for count_items)


def count_lines(path: Path) -> int | None:
    """Non-blank lines of ``path`` (a JSONL file's records); None when it cannot be read."""
    try:
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return None


def count_csv_rows(paths: Sequence[Path]) -> int | None:
    """Data rows of the CSV files ``paths`` together; None when there are none or one cannot be read."""
    if not paths:
        return None
    n = 0
    for p in paths:
        try:
            with p.open(encoding="utf-8", newline="") as f:
                n += sum(1 for _ in csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error):
            return None
    return n
