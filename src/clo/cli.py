"""The ``clo`` command line: a thin layer over the stage modules.

Each subcommand lives in its own module, registered in :data:`SUBCOMMANDS`; the module provides
``HELP`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``. A registered module that
is not importable is a subcommand not built yet: it is listed, says so when run, and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from clo import __version__

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, help shown when the module is not built yet)
    "data": ("clo.data.cli", "build the cross-lingual dataset and export per-method views"),
    "train": ("clo.train.cli", "train with CLO or a baseline (sft, sft-eng, sft-tgt, dpo, sft+dpo)"),
    "eval": ("clo.eval.cli", "evaluate a model: belebele, mmmlu, alpacaeval, fidelity, confusion"),
    "report": ("clo.report.cli", "the paper's tables and plots from finished runs"),
    "run": ("clo.experiments.cli", "run a grid of experiments from a YAML config, resumably"),
    "demo": ("clo.demo", "end-to-end demo on SmolLM2-135M-Instruct, German, on a laptop CPU"),
    "languages": ("clo.languages", "list the languages: resource codes, prompt texts, tasks and translators"),
    "push": ("clo.hub", "upload a model or dataset directory to the Hugging Face hub"),
}

NOT_BUILT_EXIT = 2
USER_ERROR_EXIT = 2

# The project's user-facing errors, as "module:Class": a bad config, input file, model spec or
# dataset. Their messages name the file, line and field; `clo` prints one as ``clo CMD: error:
# MESSAGE`` and exits USER_ERROR_EXIT, where anything else is a bug and keeps its traceback.
USER_ERRORS = (
    "clo.config_base:ConfigError",
    "clo.data.records:RecordError",
    "clo.data.translate:TranslationError",
    "clo.eval.core:EvalDataError",
    "clo.formatting:PromptTooLong",
    "clo.models:ModelLoadError",
    "clo.train.data:DatasetError",
    "clo.train.tracking:LogFileError",
    "clo.train.trainer:RunMismatch",
)
# Errors of the standard library that only bad input raises here, and whose message names the path.
_OS_USER_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, UnicodeDecodeError)


def _module_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def build_parser(subcommands: dict[str, tuple[str, str]] | None = None) -> argparse.ArgumentParser:
    subcommands = SUBCOMMANDS if subcommands is None else subcommands
    parser = argparse.ArgumentParser(
        prog="clo",
        description="Cross-Lingual Optimization: teach an English-centric LLM a new language.",
    )
    parser.add_argument("--version", action="version", version=f"clo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in subcommands.items():
        if _module_available(module):
            mod = importlib.import_module(module)
            p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
            mod.add_arguments(p)
            p.set_defaults(_main=mod.main)
        else:
            p = sub.add_parser(name, help=f"{help_text} (not built yet)")
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(_main=None, _not_built=name)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser, config_required: bool = False) -> None:
    """``CONFIG`` (YAML) and repeatable ``--set KEY=VALUE`` overrides, shared by subcommands."""
    parser.add_argument("--config", "-c", required=config_required, help="YAML config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.beta=0.2 (repeatable)",
    )


def main(argv: list[str] | None = None, subcommands: dict[str, tuple[str, str]] | None = None) -> int:
    parser = build_parser(subcommands)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    if args.command is None:
        parser.print_help()
        return NOT_BUILT_EXIT
    if args._main is None:
        print(f"clo {args._not_built}: not built yet in clo {__version__}", file=sys.stderr)
        return NOT_BUILT_EXIT
    try:
        return int(args._main(args) or 0)
    except user_errors() as e:
        print(f"clo {args.command}: error: {describe_error(e)}", file=sys.stderr)
        return USER_ERROR_EXIT


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types of :data:`USER_ERRORS` (those whose module imports) and the OS ones."""
    types: list[type[BaseException]] = []
    for entry in USER_ERRORS:
        module, name = entry.split(":")
        try:
            types.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return (*types, *_OS_USER_ERRORS)


def describe_error(e: BaseException) -> str:
    """The message of a user-facing error (a ConfigError holds one line per problem)."""
    if isinstance(e, UnicodeDecodeError):
        return f"input is not valid UTF-8 ({e})"
    return str(e)


if __name__ == "__main__":
    sys.exit(main())
