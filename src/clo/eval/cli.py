"""``clo eval TASK``: run one evaluation task on one model and print its metrics.

Every task of the registry (:func:`clo.eval.task.tasks`) is a subcommand, with the options every
task takes (``--model``, ``--lang``, ``--limit``, ...) and its own (:attr:`clo.eval.task.Task.options`):
``clo eval fidelity --help`` lists fidelity's. Another task's option is refused naming the tasks
that take it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "evaluate a model on one task (`clo eval TASK --help` lists the task's options)"

# A result whose task says it is incomplete (its judge failed on some items: the win rate is over
# fewer items than asked for), unless the task's allowing flag is given.
INCOMPLETE_EXIT = 3

_FOREIGN = "_foreign_"  # the destination prefix of other tasks' options, refused when given


def _common_arguments() -> argparse.ArgumentParser:
    """The options every task takes, as a parent parser of each task's subcommand."""
    from clo.cli import add_config_arguments, add_output_argument, add_progress_argument

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", help="the model to evaluate: offline name, local directory or hub id "
                                        "(config key model)")
    parser.add_argument("--lang", help="language code (default: config lang)")
    parser.add_argument("--data-dir", help="local data directory (default: eval.data_dir; unset reads the hub)")
    add_output_argument(parser, "output directory (default: <output_dir>/eval)")
    parser.add_argument("--backend", help="generation backend: auto, transformers or vllm (default: eval.backend)")
    parser.add_argument("--limit", type=int, help="evaluate at most this many items (MMMLU: stratified)")
    parser.add_argument("--overwrite", action="store_true",
                        help="the output's item cache was written by an evaluation of other settings (model, "
                             "options, data): start it over; without it such a cache is refused")
    add_progress_argument(parser)
    add_config_arguments(parser)
    return parser


def _add_option(parser, option, *, dest: str | None = None, hidden: bool = False) -> None:
    kw: dict = {"dest": dest or option.name,
                "help": argparse.SUPPRESS if hidden else option.help + (
                    f" (default: {option.default})" if option.default is not None and option.type is not bool else "")}
    if option.type is bool:
        kw["action"] = "store_true"
        kw["default"] = None
    else:
        kw["type"] = option.type
        kw["metavar"] = option.metavar
        if option.choices and not hidden:
            kw["choices"] = option.choices
    parser.add_argument(option.flag, **kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clo.eval.task import tasks

    registered = tasks()
    parser.description = "Evaluate a model on one task: " + ", ".join(t.name for t in registered) + "."
    common = _common_arguments()
    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    flags = {o.flag: o for t in registered for o in t.options}  # every task's options, by flag
    for task in registered:
        p = sub.add_parser(task.name, help=task.help, description=f"{task.name}: {task.help}.", parents=[common])
        own = {o.flag for o in task.options}
        group = p.add_argument_group(f"{task.name} options") if task.options else p
        for option in task.options:
            _add_option(group, option)
        for flag, option in flags.items():
            if flag not in own:
                _add_option(p, option, dest=_FOREIGN + option.name, hidden=True)


def _foreign_option(args: argparse.Namespace, task) -> str | None:
    """The message refusing another task's option given to ``task``, if one was."""
    from clo.eval.task import tasks

    for key, value in sorted(vars(args).items()):
        if key.startswith(_FOREIGN) and value is not None:
            name = key.removeprefix(_FOREIGN)
            takers = sorted(t.name for t in tasks() if t.option(name) is not None)
            flag = "--" + name.replace("_", "-")
            return f"{flag} applies only to {', '.join(takers)}, not {task.name}"
    return None


def main(args: argparse.Namespace) -> int:
    """Errors of the user's making (config, data, model spec, options) propagate to
    :func:`clo.cli.main`, which prints them as one line and exits 2."""
    from clo.cli import load_run_config
    from clo.config import ConfigError
    from clo.eval import evaluate
    from clo.eval.core import validate_options
    from clo.eval.task import get_task

    task = get_task(args.task)
    refused = _foreign_option(args, task)
    if refused:
        raise ConfigError(refused)
    overrides = list(args.overrides)
    for flag, key in (("model", "model"), ("lang", "lang"), ("data_dir", "eval.data_dir"),
                      ("backend", "eval.backend")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    cfg = load_run_config(args.config, overrides, "eval")
    given = {o.name: getattr(args, o.name) for o in task.options if getattr(args, o.name) is not None}
    options = {k: v for k, v in given.items() if task.option(k).passed}
    if args.limit is not None:
        options["limit"] = args.limit
    # --limit 0, --max-new-tokens -1: refused as eval.limit / eval.max_new_tokens would be.
    validate_options(cfg.eval, options, label=lambda k: "--" + k.replace("_", "-"))
    out = Path(args.output) if args.output is not None else Path(cfg.output_dir) / "eval"
    metrics = evaluate(task.name, cfg.model, cfg, out, overwrite=args.overwrite, **options)
    print(json.dumps(metrics, indent=2, ensure_ascii=False))
    problem = task.incomplete(metrics, given) if task.incomplete is not None else None
    if problem:
        # Fewer items than asked for: not a result to take silently.
        print(f"clo eval: {problem}", file=sys.stderr)
        return INCOMPLETE_EXIT
    return 0
