"""``clo run CONFIG.yaml``: run or resume a grid of experiments."""

from __future__ import annotations

import argparse
import json
import sys

from clo.cli import add_config_arguments, add_output_argument

HELP = "run a grid of experiments (model x language x method x size) from a YAML config, resumably"

#: Exit status when the checks before the grid found problems (nothing ran).
CHECKS_FAILED_EXIT = 2
#: Exit status when every stage finished but an evaluation's result is incomplete (as ``clo eval``).
INCOMPLETE_EXIT = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", nargs="?", metavar="CONFIG.yaml", help="grid config (see configs/)")
    add_config_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="check the grid and list its runs, estimated time, API tokens and cost; run nothing")
    parser.add_argument("--json", action="store_true",
                        help="with --dry-run: print the planned stages, the checks and the estimate as one JSON "
                             "object (schema in docs/experiments.md)")
    parser.add_argument("--no-memory", action="store_true",
                        help="with --dry-run: leave out the training runs' memory estimate (20-80 s per distinct "
                             "model and memory setting at 8B)")
    parser.add_argument("--launcher", help="where the stages run: local (this process) or slurm (one job per "
                                           "stage, through submitit); default: the grid's launcher.kind")
    parser.add_argument("--assumptions", metavar="FILE",
                        help="rates and prices of the estimate (YAML over the shipped assumptions.yaml)")
    parser.add_argument("--skip-checks", action="store_true",
                        help="start without the checks (keys, data, models, disk) and the estimate")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing stage")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--allow-failed-judgments", action="store_true",
                        help="exit 0 even when some judgments of a judged evaluation failed (its win rate is then "
                             "over the judged items only; without it such a grid exits 3)")
    add_output_argument(parser, "grid directory (default: the grid's output_dir)")


def main(args: argparse.Namespace) -> int:
    from clo.config_base import ConfigError
    from clo.experiments.config import expand, load_grid
    from clo.experiments.estimate import format_estimate, load_assumptions
    from clo.experiments.graph import plan
    from clo.experiments.launchers import get_launcher
    from clo.experiments.preflight import preflight

    path = args.grid or args.config
    if path is None:
        raise ConfigError("clo run: give the grid config, e.g. `clo run configs/paper.yaml`")
    if args.grid and args.config:
        raise ConfigError("clo run: give the grid config once (positional or --config)")
    if args.json and not args.dry_run:
        raise ConfigError("clo run: --json goes with --dry-run (it prints the plan; a run prints its progress)")
    overrides = list(args.overrides)
    if args.output:
        overrides.append(f"output_dir={json.dumps(str(args.output))}")
    if args.launcher:
        overrides.append(f"launcher.kind={args.launcher}")
    grid = load_grid(path, overrides)
    launcher = grid.launcher.kind
    if args.json:
        checked = preflight(grid, str(path), launcher=launcher, assumptions=load_assumptions(args.assumptions))
        print(json.dumps(dry_run_json(grid, checked), indent=1, ensure_ascii=False))
        return CHECKS_FAILED_EXIT if checked.errors else 0
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
        if not args.no_memory:
            from clo.train.memory import plan_lines

            for line in plan_lines(expand(grid)):
                print(line)
        return 0
    outcome = get_launcher(launcher).launch(grid, fail_fast=args.fail_fast, progress=not args.no_progress)
    for line in outcome.lines:
        print(line)
    for key, err in outcome.failures.items():
        print(f"FAILED {key}: {err}", file=sys.stderr)
    res = outcome.grid_result  # the in-process launcher's; Slurm jobs end after this command
    incomplete = [] if res is None else incomplete_evaluations(
        res.stages, res.done, {"allow_failed_judgments": True} if args.allow_failed_judgments else {})
    for line in incomplete:
        print(f"INCOMPLETE {line}", file=sys.stderr)
    if not outcome.ok:
        return 1
    return INCOMPLETE_EXIT if incomplete else 0


def incomplete_evaluations(stages, done: dict, given: dict) -> list[str]:
    """``"<stage>: <why>"`` for each finished evaluation whose task calls its result incomplete
    (:attr:`clo.eval.task.Task.incomplete`: a judged win rate over fewer items than asked for), with
    the job's options and the command line's ``given`` (``allow_failed_judgments``) as options."""
    from clo.eval.task import get_task

    out = []
    for stage in stages:
        if stage.job is None or stage.kind not in ("eval", "pairwise") or stage.name not in done:
            continue
        task, metrics = get_task(stage.job.task), done[stage.name][0]
        if task.incomplete is None or not isinstance(metrics, dict):
            continue
        problem = task.incomplete(metrics, {**stage.job.opts, **given})
        if problem:
            # A grid does not rerun a finished stage: removing its marker does (cached items are kept).
            out.append(f"{stage.name}: {problem} (in a grid: remove {stage.marker} to run it again)")
    return out


#: The version of the ``clo run --dry-run --json`` schema (docs/experiments.md).
DRY_RUN_SCHEMA = 1


def dry_run_json(grid, checked) -> dict:
    """The plan of ``grid`` as ``clo run --dry-run --json`` prints it: every stage (its run, method,
    size, evaluation, baseline, prompt template where a job sets one, whether it is done, its
    estimate), the checks' findings and the estimate's summary per phase."""
    from clo.experiments.graph import grid_stages

    est = {s.name: s for s in checked.estimate.stages}
    stages = []
    for st in grid_stages(grid):
        e = est.get(st.name)
        res = st.resources(grid)
        stages.append({**st.describe(), "done": st.name in checked.done, "resources": {
            "gpus_per_node": res.gpus_per_node, "nodes": res.nodes, "cpus_per_task": res.cpus_per_task,
            "timeout_min": res.timeout_min}, "estimate": None if e is None else {
            "seconds": round(e.seconds, 1), "gpus": e.gpus, "api_tokens_in": round(e.api_in),
            "api_tokens_out": round(e.api_out), "cost_usd": e.cost, "api_model": e.api_model, "note": e.note}})
    return {
        "schema": DRY_RUN_SCHEMA, "grid": grid.name, "output_dir": grid.output_dir, "baseline": grid.baseline,
        "launcher": grid.launcher.kind, "stages": stages,
        "checks": [{"check": f.check, "level": f.level, "where": f.where, "message": f.message}
                   for f in checked.findings],
        "estimate": {"to_run": len(checked.estimate.stages), "done": checked.estimate.done,
                     "phases": checked.estimate.phases(), "notes": checked.estimate.notes},
    }
