"""``clo train``: train with CLO or a baseline on a cross-lingual dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clo.cli import add_config_arguments, add_output_argument, add_progress_argument, load_run_config

HELP = "train with CLO or a baseline (sft, sft-eng, sft-tgt, dpo, sft+dpo)"


def method_choices() -> tuple[str, ...]:
    """The values of train.method (clo.train.methods' METHODS and STAGES), read from the config's
    type so that `clo train --help` does not import torch."""
    import typing

    from clo.train.config import TrainConfig

    return typing.get_args(TrainConfig.model_fields["method"].annotation)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", help="the model to train: hub id, local directory or offline name "
                                        "(config key model)")
    parser.add_argument("--lang", help="target language, a code of `clo languages` (config key lang)")
    parser.add_argument("--method", choices=method_choices(), help="overrides train.method")
    parser.add_argument("--data", type=Path, help="training records (JSONL or Parquet); required unless "
                                                  "--estimate-memory")
    parser.add_argument("--val", type=Path, help="validation records; the best-validation checkpoint is kept")
    add_output_argument(parser, "run directory (default: output_dir of the config)")
    parser.add_argument("--nll-langs", help="languages of the CLO NLL term: tgt (default) or tgt,en")
    parser.add_argument("--trainable", help="attention (default), full, lora, or a regular expression")
    parser.add_argument("--report-to", help="metrics trackers beside log.jsonl: none (default), tensorboard, "
                                            "wandb, or tensorboard,wandb (train.report_to)")
    parser.add_argument("--live-reference", action="store_true",
                        help="keep a reference model in memory instead of precomputed log-probs")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an output directory that holds a run of another configuration")
    parser.add_argument("--estimate-memory", action="store_true",
                        help="print the peak memory per GPU of one training step, from the model's config "
                             "alone (the real step on fake tensors), and exit")
    parser.add_argument("--gpus", type=int, default=1, help="with --estimate-memory: GPUs sharing the model (FSDP2)")
    parser.add_argument("--gpu-memory", type=float, help="with --estimate-memory: GiB per GPU; also print the "
                                                        "largest train.max_tokens_per_micro_batch that fits")
    add_progress_argument(parser)


def main(args: argparse.Namespace) -> int:
    """Errors of the user's making (config, dataset, model spec) propagate to
    :func:`clo.cli.main`, which prints them as one line and exits 2; a diverged run exits 3."""
    from clo.train.tracking import check_trackers

    overrides = list(args.overrides)
    for flag, key in (("model", "model"), ("lang", "lang"), ("method", "train.method"),
                      ("trainable", "train.trainable")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if args.nll_langs is not None:
        overrides.append(f"train.nll_langs=[{args.nll_langs}]")
    if args.report_to is not None:
        overrides.append(f"train.report_to=[{args.report_to}]")
    if args.live_reference:
        overrides.append("train.live_reference=true")
    cfg = load_run_config(args.config, overrides, "train")
    if args.estimate_memory:
        from clo.train.memory import estimate_for_config

        est = estimate_for_config(cfg, gpus=args.gpus, gpu_memory_gib=args.gpu_memory)
        parts = ", ".join(f"{k} {v:.2f}" for k, v in est["parts_gib"].items() if v >= 0.005)
        print(f"peak {est['peak_gib_per_gpu']:.2f} GiB per GPU ({parts}) for {est['model']}, "
              f"{est['tokens_per_micro_batch']} tokens per micro-batch, {est['gpus']} GPU(s), "
              f"train.tokenwise_chunk={est['tokenwise_chunk'] or 'null'}", file=sys.stderr)
        if "fits" in est:
            print(f"fits in {args.gpu_memory} GiB: --set train.max_tokens_per_micro_batch="
                  f"{est['tokens_per_micro_batch']}" if est["fits"] else f"does not fit in {args.gpu_memory} GiB: "
                  f"{est['note']}", file=sys.stderr)
        print(json.dumps(est, indent=1))
        return 0
    if args.data is None:
        from clo.errors import CloError

        raise CloError("--data is required (unless --estimate-memory)")
    check_trackers(cfg.train.report_to)  # a missing tracker package: an error now, not after the model loads
    for what, path in (("--data", args.data), ("--val", args.val)):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{what} {path}: no such dataset file")
    output = Path(args.output) if args.output is not None else Path(cfg.output_dir)

    from clo.train.trainer import TrainingDiverged, train

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
