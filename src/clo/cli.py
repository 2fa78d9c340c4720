"""The ``clo`` command line: a thin layer over the stage modules.

Each subcommand lives in its own module, registered in :data:`SUBCOMMANDS` with a one-line help;
the module provides ``HELP`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``. Only
the chosen subcommand's module is imported (``clo --help`` imports none, so it answers at once).

The conventions every subcommand follows: ``--output`` is where it writes (``--out`` and
``--output-dir`` are aliases); ``--config/-c FILE.yaml`` and repeatable ``--set KEY=VALUE`` on the
subcommands that read a config; ``--model`` is the model trained or evaluated; ``--no-progress``
switches the progress bars off; ``-v`` (before the subcommand) shows debug logs and the libraries'
own messages.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.abc
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator

from clo import __version__
from clo.errors import USER_ERROR_EXIT, CloError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, one-line help of `clo --help`; the module's HELP describes the subcommand itself)
    "data": ("clo.data.cli", "build the cross-lingual dataset and export per-method views"),
    "train": ("clo.train.cli", "train with CLO or a baseline (sft, sft-eng, sft-tgt, dpo, sft+dpo)"),
    "eval": ("clo.eval.cli", "evaluate a model on one task (`clo eval --help` lists the tasks)"),
    "report": ("clo.report.cli", "the paper's tables and plots from finished runs"),
    "run": ("clo.experiments.cli", "run a grid of experiments from a YAML config, resumably"),
    "demo": ("clo.demo", "end-to-end demo on SmolLM2-135M-Instruct, German, on a laptop CPU"),
    "languages": ("clo.languages", "list the languages: resource codes, prompt texts, tasks and translators"),
    "push": ("clo.hub", "upload a model or dataset directory to the Hugging Face hub"),
}

#: The exit status of a usage error: no subcommand (argparse exits 2 for bad arguments, too).
USAGE_EXIT = 2

# Errors of the standard library that only bad input raises here, and whose message names the path.
_OS_USER_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, UnicodeDecodeError)

#: Libraries that log a line per HTTP request or file lock at INFO: WARNING and above only, unless -v.
NOISY_LOGGERS = ("httpx", "httpx2", "httpcore", "urllib3", "openai", "filelock", "fsspec", "asyncio",
                 "huggingface_hub")
#: Where library warnings meant for developers come from (FutureWarning, DeprecationWarning, and
#: these modules' UserWarnings): hidden unless -v.
NOISY_WARNING_MODULES = r"(torch|transformers|accelerate|peft|datasets|huggingface_hub|trl|vllm)(\.|$)"


def _chosen_command(argv: list[str], names) -> str | None:
    """The subcommand named in ``argv``: its first word that is not an option (the top-level
    options take no value)."""
    for tok in argv:
        if tok == "--":
            return None
        if not tok.startswith("-"):
            return tok if tok in names else None
    return None


def _unknown_command(argv: list[str], names) -> str | None:
    """``unknown command 'trian'; did you mean 'train'? known: ...`` when the first word of
    ``argv`` that is not an option names no subcommand (argparse would list the choices only)."""
    for tok in argv:
        if tok == "--":
            return None
        if not tok.startswith("-"):
            if tok in names:
                return None
            from clo.registry import unknown_name_message  # only on the error path: --help stays light

            return unknown_name_message("command", tok, names)
    return None


def build_parser(subcommands: dict[str, tuple[str, str]] | None = None,
                 argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand chosen in ``argv`` (None: every subcommand) gets its
    module's arguments, the others are listed with their one-line help."""
    subcommands = SUBCOMMANDS if subcommands is None else subcommands
    chosen = None if argv is None else _chosen_command(argv, subcommands)
    parser = argparse.ArgumentParser(
        prog="clo",
        description="Cross-Lingual Optimization: teach an English-centric LLM a new language.",
        epilog="`clo COMMAND --help` describes a command. Conventions: --output DIR (aliases --out, "
               "--output-dir), --config/-c FILE.yaml with --set KEY=VALUE, --no-progress; -v before "
               "the command shows debug logs and the libraries' messages.",
    )
    parser.add_argument("--version", action="version", version=f"clo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the libraries' own log lines, warnings and progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in subcommands.items():
        build = argv is None or name == chosen
        if build:
            mod = importlib.import_module(module)
            p = sub.add_parser(name, help=help_text, description=mod.HELP)
            mod.add_arguments(p)
            p.set_defaults(_main=mod.main)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser, config_required: bool = False) -> None:
    """``--config/-c FILE.yaml`` and repeatable ``--set KEY=VALUE`` overrides, shared by subcommands."""
    parser.add_argument("--config", "-c", required=config_required, metavar="FILE.yaml",
                        help="YAML config file: a single-run preset (configs/train/*.yaml); a grid preset "
                             "(configs/*.yaml) gives its base: section")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.beta=0.2 (repeatable)",
    )


def add_output_argument(parser: argparse.ArgumentParser, help: str, metavar: str = "DIR",
                        default: str | None = None) -> None:
    """``--output`` with its aliases ``--out`` and ``--output-dir`` (one destination, ``output``)."""
    parser.add_argument("--output", dest="output", metavar=metavar, default=default,
                        help=f"{help} (aliases: --out, --output-dir)")
    parser.add_argument("--out", "--output-dir", dest="output", metavar=metavar, default=default,
                        help=argparse.SUPPRESS)


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (for logs written to a file)")


def load_run_config(path, overrides, command: str):
    """The config of a single-run command (``data build``, ``train``, ``eval``): defaults, the
    YAML file, then the overrides. A grid preset (``clo run``'s format) gives its ``base:``
    section, with a one-line note on stderr saying so."""
    from clo.config import Config, config_from_dict, load_config, load_yaml

    if path is None:
        return load_config(None, overrides)
    tree = load_yaml(path)
    extra = sorted(set(tree) - set(Config.model_fields))
    if "base" not in tree or not isinstance(tree["base"], dict) or not extra:
        return config_from_dict(tree, str(path), overrides)
    ignored = ", ".join(k for k in extra if k != "base")
    print(f"clo {command}: note: {path} is a grid config (for `clo run`); using its base: section"
          + (f" (ignoring {ignored}; give --model/--lang or --set)" if ignored else "")
          + ". Single-run presets: configs/train/*.yaml", file=sys.stderr)
    return config_from_dict(tree["base"], f"{path}: base", overrides)


def main(argv: list[str] | None = None, subcommands: dict[str, tuple[str, str]] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    unknown = _unknown_command(argv, SUBCOMMANDS if subcommands is None else subcommands)
    if unknown:
        print(f"usage: clo [-h] [--version] [-v] COMMAND ...\nclo: error: {unknown}", file=sys.stderr)
        return USER_ERROR_EXIT
    try:
        parser = build_parser(subcommands, argv)
    except (CloError, *_OS_USER_ERRORS) as e:  # a bad file in $CLO_LANGUAGES, read as the commands load
        print(f"clo: error: {describe_error(e)}", file=sys.stderr)
        return USER_ERROR_EXIT
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    if args.command is None:
        parser.print_help()
        return USAGE_EXIT
    with contextlib.ExitStack() as stack:
        if not args.verbose:
            stack.enter_context(quiet_libraries())
        if getattr(args, "no_progress", False):
            stack.enter_context(progress_disabled())
        stack.enter_context(_logs_through_tqdm())
        try:
            return int(args._main(args) or 0)
        except (CloError, *_OS_USER_ERRORS) as e:
            print(f"clo {args.command}: error: {describe_error(e)}", file=sys.stderr)
            return USER_ERROR_EXIT


# -- logs and progress bars ------------------------------------------------------------------------

class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``callback(module)`` right after the module ``name`` is first imported, so that a
    library is configured when (and only if) something imports it."""

    def __init__(self, name: str, callback: Callable):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module, callback = loader.exec_module, self.callback

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                exec_module(module)
                callback(module)

            def __getattr__(self, attr):  # get_resource_reader, is_package, ...
                return getattr(loader, attr)

        spec.loader = _Loader()
        return spec


@contextlib.contextmanager
def _configure_on_import(name: str, configure: Callable, restore: Callable) -> Iterator[None]:
    """``configure(module)`` now if ``name`` is imported, else as soon as it is; ``restore`` after."""
    touched = []

    def run(module):
        configure(module)
        touched.append(module)

    hook = None
    if name in sys.modules:
        run(sys.modules[name])
    else:
        hook = _AfterImport(name, run)
        sys.meta_path.insert(0, hook)
    try:
        yield
    finally:
        if hook is not None and hook in sys.meta_path:
            sys.meta_path.remove(hook)
        for module in touched:
            restore(module)


def _quiet_transformers(module) -> None:
    module._clo_saved = (module.get_verbosity(), module.is_progress_bar_enabled())
    module.set_verbosity_error()
    module.disable_progress_bar()  # "Loading weights" on every model load


def _restore_transformers(module) -> None:
    verbosity, bars = getattr(module, "_clo_saved", (logging.WARNING, True))
    module.set_verbosity(verbosity)
    if bars:
        module.enable_progress_bar()


def _quiet_datasets(module) -> None:
    module._clo_saved = module.are_progress_bars_disabled()
    module.disable_progress_bars()  # "Generating train split", "Map", ... on every load


def _restore_datasets(module) -> None:
    if not getattr(module, "_clo_saved", False):
        module.enable_progress_bars()


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """The default log: clo's INFO lines and progress bars, and of the libraries only warnings that
    matter: no line per HTTP request (httpx, openai), no transformers INFO/advisory lines or
    per-load bars, no FutureWarning/DeprecationWarning. Everything is restored on exit."""
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    env = {k: os.environ.get(k) for k in ("TRANSFORMERS_NO_ADVISORY_WARNINGS",)}
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("ignore", category=UserWarning, module=NOISY_WARNING_MODULES)
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        stack.enter_context(_configure_on_import("transformers.utils.logging", _quiet_transformers,
                                                 _restore_transformers))
        stack.enter_context(_configure_on_import("datasets.utils.tqdm", _quiet_datasets, _restore_datasets))
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@contextlib.contextmanager
def progress_disabled() -> Iterator[None]:
    """No tqdm progress bar at all (``--no-progress``): every bar, ours and the libraries', even
    one created with an explicit ``disable=False``; ``TQDM_DISABLE=1`` for child processes."""
    from tqdm import std

    raw = std.tqdm.__dict__["__init__"]  # a partialmethod (tqdm's TQDM_* defaults): restored as is
    original = std.tqdm.__init__
    old_env = os.environ.get("TQDM_DISABLE")

    @functools.wraps(original)
    def init(self, *a, **kw):
        kw["disable"] = True
        original(self, *a, **kw)

    std.tqdm.__init__ = init
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        std.tqdm.__init__ = raw
        if old_env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old_env


@contextlib.contextmanager
def _logs_through_tqdm() -> Iterator[None]:
    """Console log lines written with ``tqdm.write``, so that they land above a progress bar
    instead of breaking it."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    console = [h for h in logging.getLogger().handlers
               if type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr)]
    if not console:  # logs go elsewhere (a file, a test's capture): nothing to redirect
        yield
        return
    with logging_redirect_tqdm():
        yield


# -- errors ----------------------------------------------------------------------------------------

def describe_error(e: BaseException) -> str:
    """The message of a user-facing error (a ConfigError holds one line per problem)."""
    if isinstance(e, UnicodeDecodeError):
        return f"input is not valid UTF-8 ({e})"
    return str(e)


if __name__ == "__main__":
    sys.exit(main())
