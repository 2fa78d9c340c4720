"""``clo run CONFIG.yaml``: run or resume a grid of experiments."""

from __future__ import annotations

import argparse
import sys

from clo.cli import add_config_arguments

HELP = "run a grid of experiments (model x language x method x size) from a YAML config, resumably"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", nargs="?", metavar="CONFIG.yaml", help="grid config (see configs/)")
    add_config_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="list the runs and evaluations, run nothing")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing stage")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    from clo.config_base import ConfigError
    from clo.experiments.config import expand, load_grid
    from clo.experiments.grid import plan, run_grid

    path = args.grid or args.config
    if path is None:
        raise ConfigError("clo run: give the grid config, e.g. `clo run configs/paper.yaml`")
    if args.grid and args.config:
        raise ConfigError("clo run: give the grid config once (positional or --config)")
    grid = load_grid(path, args.overrides)
    if args.dry_run:
        p = plan(grid, expand(grid))
        print(f"grid {grid.name}: {len(p['runs'])} runs in {grid.output_dir}")
        for r in p["runs"]:
            print(f"  {r['run_id']:<50} {', '.join(r['evals'])}")
        return 0
    result = run_grid(grid, fail_fast=args.fail_fast, progress=not args.no_progress)
    print(f"grid {grid.name}: {len(result.ran)} stages ran, {len(result.skipped)} already done, "
          f"{result.seconds:.0f}s")
    if result.report:
        print(f"report: {result.report['dir']}/report.md")
    for key, err in result.failures.items():
        print(f"FAILED {key}: {err}", file=sys.stderr)
    return 0 if result.ok else 1
