"""``clo run CONFIG.yaml``: run or resume a grid of experiments."""

from __future__ import annotations

import argparse
import json
import sys

from clo.cli import add_config_arguments, add_output_argument

HELP = "run a grid of experiments (model x language x method x size) from a YAML config, resumably"

#: Exit status when the checks before the grid found problems (nothing ran).
CHECKS_FAILED_EXIT = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", nargs="?", metavar="CONFIG.yaml", help="grid config (see configs/)")
    add_config_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="check the grid and list its runs, estimated time, API tokens and cost; run nothing")
    parser.add_argument("--launcher", help="where the stages run: local (this process) or slurm (one job per "
                                           "stage, through submitit); default: the grid's launcher.kind")
    parser.add_argument("--assumptions", metavar="FILE",
                        help="rates and prices of the estimate (YAML over the shipped assumptions.yaml)")
    parser.add_argument("--skip-checks", action="store_true",
                        help="start without the checks (keys, data, models, disk) and the estimate")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing stage")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_output_argument(parser, "grid directory (default: the grid's output_dir)")


def main(args: argparse.Namespace) -> int:
    from clo.config_base import ConfigError
    from clo.experiments.config import expand, load_grid
    from clo.experiments.estimate import format_estimate, load_assumptions
    from clo.experiments.grid import plan
    from clo.experiments.launchers import get_launcher
    from clo.experiments.preflight import preflight

    path = args.grid or args.config
    if path is None:
        raise ConfigError("clo run: give the grid config, e.g. `clo run configs/paper.yaml`")
    if args.grid and args.config:
        raise ConfigError("clo run: give the grid config once (positional or --config)")
    overrides = list(args.overrides)
    if args.output:
        overrides.append(f"output_dir={json.dumps(str(args.output))}")
    if args.launcher:
        overrides.append(f"launcher.kind={args.launcher}")
    grid = load_grid(path, overrides)
    launcher = grid.launcher.kind
    if args.dry_run:
        p = plan(grid, expand(grid))
        print(f"grid {grid.name}: {len(p['runs'])} runs in {grid.output_dir}")
        for r in p["runs"]:
            print(f"  {r['run_id']:<50} {', '.join(r['evals'])}")
    if not args.skip_checks or args.dry_run:
        checked = preflight(grid, str(path), launcher=launcher, assumptions=load_assumptions(args.assumptions))
        print(format_estimate(checked.estimate, launcher))
        print(checked.format(), file=sys.stdout if args.dry_run else sys.stderr)
        if checked.errors:
            print(f"clo run: {len(checked.errors)} problem(s) found before any stage ran; nothing was started",
                  file=sys.stderr)
            return CHECKS_FAILED_EXIT
    if args.dry_run:
        return 0
    outcome = get_launcher(launcher).launch(grid, fail_fast=args.fail_fast, progress=not args.no_progress)
    for line in outcome.lines:
        print(line)
    for key, err in outcome.failures.items():
        print(f"FAILED {key}: {err}", file=sys.stderr)
    return 0 if outcome.ok else 1
