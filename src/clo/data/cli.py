"""``clo data build`` and ``clo data view``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "build the cross-lingual dataset (translate, check, split) and export per-method views"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clo.cli import add_config_arguments

    sub = parser.add_subparsers(dest="data_command", metavar="{build,view}", required=True)
    b = sub.add_parser("build", help="English source -> translated, checked, split dataset",
                       description="Translate an English instruction source into the target language "
                                   "(resumable: rerun the same command after an interruption).")
    add_config_arguments(b)
    b.add_argument("--out", help="output directory (default: <output_dir>/data)")
    b.add_argument("--source", choices=["oasst1", "alpaca", "chat"], help="data.source")
    b.add_argument("--path", help="data.path: local source file or directory")
    b.add_argument("--lang", help="target language (ISO 639-1)")
    b.add_argument("--n", type=int, help="data.n: number of English examples")
    b.add_argument("--translator", help="data.translator.kind (seq2seq, causal, openai, identity)")
    b.add_argument("--model", dest="translator_model", help="data.translator.model")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--rebuild-cache", action="store_true",
                   help="move the translation cache aside (to <cache>.broken-<time>) and start a new one: "
                        "for a damaged cache; every segment is translated again")
    b.add_argument("--overwrite", action="store_true",
                   help="the output directory holds a build of other inputs: remove its outputs and build "
                        "again (the translation cache is kept); without it such a directory is refused")
    v = sub.add_parser("view", help="export a per-method view (sft, sft-eng, sft-tgt, dpo, clo)")
    v.add_argument("dataset", help="a dataset file (train.jsonl / .parquet)")
    v.add_argument("--view", required=True, help="sft, sft-eng, sft-tgt, dpo or clo")
    v.add_argument("--out", required=True, help="output file (.jsonl or .parquet)")
    v.add_argument("--seed", type=int, default=0, help="shuffle seed of the dpo view")


def _overrides(args) -> list[str]:
    ov = []
    for flag, key in (("source", "data.source"), ("path", "data.path"), ("lang", "lang"), ("n", "data.n"),
                      ("translator", "data.translator.kind"), ("translator_model", "data.translator.model")):
        val = getattr(args, flag, None)
        if val is not None:
            ov.append(f"{key}={json.dumps(val)}")
    return ov + list(args.overrides)


def main(args) -> int:
    from clo.config_base import ConfigError

    try:
        return _run(args)
    except ConfigError:
        raise  # clo.cli prints configuration errors
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        # Bad input names its file, line and field; no traceback for the user's mistakes.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"clo data {args.data_command}: {msg}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.data_command == "build":
        from clo.config import load_config
        from clo.data.build import build_dataset

        cfg = load_config(args.config, _overrides(args))
        out = Path(args.out) if args.out else Path(cfg.output_dir) / "data"
        build_dataset(cfg, out, progress=not args.no_progress, rebuild_cache=args.rebuild_cache,
                      overwrite=args.overwrite)
        print((out / "summary.md").read_text(encoding="utf-8"))
        return 0
    if args.data_command == "view":
        from clo.data.records import read_records
        from clo.data.views import VIEWS, make_view, write_view

        if args.view not in VIEWS:
            print(f"clo data view: unknown view {args.view!r}; known: {', '.join(VIEWS)}", file=sys.stderr)
            return 2
        records = read_records(args.dataset)
        rows = make_view(args.view, records, args.seed)
        path = write_view(rows, args.out)
        print(f"{args.view}: {len(rows)} rows from {len(records)} records -> {path}")
        return 0
    return 2
