"""``clo eval TASK``: run one evaluation task on one model and print its metrics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "evaluate a model: belebele, mmmlu, alpacaeval, alpacaeval-outputs, fidelity, confusion"

# An evaluation whose judge failed on some items: its win rate is over fewer items than asked for.
FAILED_JUDGMENTS_EXIT = 3

TASK_NAMES = ("belebele", "mmmlu", "alpacaeval", "alpacaeval-outputs", "fidelity", "confusion")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clo.cli import add_config_arguments, add_output_argument, add_progress_argument

    parser.add_argument("task", choices=TASK_NAMES)
    parser.add_argument("--model", help="the model to evaluate: offline name, local directory or hub id "
                                        "(config key model)")
    parser.add_argument("--lang", help="language code (default: config lang)")
    parser.add_argument("--data-dir", help="local data directory (default: eval.data_dir; unset reads the hub)")
    add_output_argument(parser, "output directory (default: <output_dir>/eval)")
    parser.add_argument("--backend", help="generation backend: auto, transformers or vllm (default: eval.backend)")
    parser.add_argument("--limit", type=int, help="evaluate at most this many items (MMMLU: stratified)")
    parser.add_argument("--template", choices=("native", "harness"), help="belebele: prompt template")
    parser.add_argument("--max-new-tokens", type=int, help="generation length (default: eval.max_new_tokens)")
    parser.add_argument("--prompts-file", help="fidelity: prompts (.txt/.json/.jsonl/.csv)")
    parser.add_argument("--split", choices=("monolingual", "crosslingual", "all"), help="confusion: prompt split")
    parser.add_argument("--baseline", help="alpacaeval: baseline model spec")
    parser.add_argument("--baseline-outputs", help="alpacaeval: baseline outputs (alpaca_eval JSON)")
    parser.add_argument("--instructions-file", help="alpacaeval: instructions (alpaca_eval JSON)")
    parser.add_argument("--translated-file", help="alpacaeval: instructions already in the target language")
    parser.add_argument("--overwrite", action="store_true",
                        help="the output's item cache was written by an evaluation of other settings (model, "
                             "options, data): start it over; without it such a cache is refused")
    parser.add_argument("--allow-failed-judgments", action="store_true",
                        help="alpacaeval: exit 0 even when some judgments failed (the win rate is then over "
                             "the judged items only; without it such a run exits 3)")
    add_progress_argument(parser)
    add_config_arguments(parser)


# CLI flag -> (task option, tasks that take it)
_OPTIONS = {
    "template": ("template", {"belebele"}),
    "max_new_tokens": ("max_new_tokens", {"mmmlu", "alpacaeval", "alpacaeval-outputs", "fidelity", "confusion"}),
    "prompts_file": ("prompts_file", {"fidelity"}),
    "split": ("split", {"confusion"}),
    "baseline": ("baseline", {"alpacaeval"}),
    "baseline_outputs": ("baseline_outputs", {"alpacaeval"}),
    "instructions_file": ("instructions_file", {"alpacaeval", "alpacaeval-outputs"}),
    "translated_file": ("translated_file", {"alpacaeval", "alpacaeval-outputs"}),
}


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def main(args: argparse.Namespace) -> int:
    """Errors of the user's making (config, data, model spec, options) propagate to
    :func:`clo.cli.main`, which prints them as one line and exits 2."""
    from clo.cli import load_run_config
    from clo.config import ConfigError
    from clo.eval import evaluate
    from clo.eval.core import validate_options

    overrides = list(args.overrides)
    for flag, key in (("model", "model"), ("lang", "lang"), ("data_dir", "eval.data_dir"),
                      ("backend", "eval.backend")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    cfg = load_run_config(args.config, overrides, "eval")
    options = {}
    for flag, (opt, tasks) in _OPTIONS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if args.task not in tasks:
            raise ConfigError(f"{_flag(flag)} applies only to {', '.join(sorted(tasks))}, not {args.task}")
        options[opt] = value
    if args.limit is not None:
        options["limit"] = args.limit
    # --limit 0, --max-new-tokens -1: refused as eval.limit / eval.max_new_tokens would be.
    validate_options(cfg.eval, options, label=_flag)
    out = Path(args.output) if args.output is not None else Path(cfg.output_dir) / "eval"
    metrics = evaluate(args.task, cfg.model, cfg, out, overwrite=args.overwrite, **options)
    print(json.dumps(metrics, indent=2, ensure_ascii=False))
    failures = metrics.get("failures") or 0
    if args.task == "alpacaeval" and failures and not args.allow_failed_judgments:
        # The win rate is over fewer items than asked for: not a result to take silently.
        print(f"clo eval: {failures} judgment(s) failed (the records' 'error' says why): the win rate is over "
              f"{metrics.get('n', 0)} items only; rerun to judge them again, or pass --allow-failed-judgments "
              "to accept it", file=sys.stderr)
        return FAILED_JUDGMENTS_EXIT
    return 0
