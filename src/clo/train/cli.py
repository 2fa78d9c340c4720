"""``clo train``: train with CLO or a baseline on a cross-lingual dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clo.cli import add_config_arguments

HELP = "train with CLO or a baseline (sft, sft-eng, sft-tgt, dpo, sft+dpo)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clo.train.methods import METHODS, STAGES

    add_config_arguments(parser)
    parser.add_argument("--method", choices=[*METHODS, *STAGES], help="overrides train.method")
    parser.add_argument("--data", required=True, type=Path, help="training records (JSONL or Parquet)")
    parser.add_argument("--val", type=Path, help="validation records; the best-validation checkpoint is kept")
    parser.add_argument("--output", type=Path, help="run directory (default: output_dir of the config)")
    parser.add_argument("--nll-langs", help="languages of the CLO NLL term: tgt (default) or tgt,en")
    parser.add_argument("--trainable", help="attention (default), full, lora, or a regular expression")
    parser.add_argument("--live-reference", action="store_true",
                        help="keep a reference model in memory instead of precomputed log-probs")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an output directory that holds a run of another configuration")


def main(args: argparse.Namespace) -> int:
    """Errors of the user's making (config, dataset, model spec) propagate to
    :func:`clo.cli.main`, which prints them as one line and exits 2; a diverged run exits 3."""
    from clo.config import load_config
    from clo.train.trainer import TrainingDiverged, train

    overrides = list(args.overrides)
    if args.method is not None:
        overrides.append(f"train.method={args.method}")
    if args.nll_langs is not None:
        overrides.append(f"train.nll_langs=[{args.nll_langs}]")
    if args.trainable is not None:
        overrides.append(f"train.trainable={json.dumps(args.trainable)}")
    if args.live_reference:
        overrides.append("train.live_reference=true")
    cfg = load_config(args.config, overrides)
    for what, path in (("--data", args.data), ("--val", args.val)):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{what} {path}: no such dataset file")
    output = args.output if args.output is not None else Path(cfg.output_dir)
    try:
        result = train(cfg, args.data, args.val, output, overwrite=args.overwrite)
    except TrainingDiverged as e:
        print(f"clo train: {e}", file=sys.stderr)
        return 3
    m = result.metrics
    print(json.dumps({"best_checkpoint": str(result.best_checkpoint),
                      **{k: m.get(k) for k in ("method", "steps", "best_val_loss", "final_val_loss", "train_loss",
                                               "examples_per_s", "tokens_per_s")}}, indent=1))
    return 0
