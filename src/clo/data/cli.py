"""``clo data build``, ``clo data view`` and ``clo data check``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = ("build the cross-lingual dataset (translate, check, split), export per-method views, "
        "check translations")


class _DeprecatedModel(argparse.Action):
    """``data build --model``: the translator model, an old spelling of --translator-model (on
    ``train`` and ``eval``, --model is the model trained or evaluated)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print("clo data build: --model is deprecated here, use --translator-model (the translation model)",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clo.cli import add_config_arguments, add_output_argument, add_progress_argument

    sub = parser.add_subparsers(dest="data_command", metavar="{build,view,check}", required=True)
    b = sub.add_parser("build", help="English source -> translated, checked, split dataset",
                       description="Translate an English instruction source into the target language "
                                   "(resumable: rerun the same command after an interruption).")
    add_config_arguments(b)
    add_output_argument(b, "output directory (default: <output_dir>/data)")
    b.add_argument("--source", choices=SOURCE_CHOICES,
                   help="data.source: the rows' format (auto: told by each row's keys; docs/data.md)")
    b.add_argument("--path", help="data.path: local file or directory, or a hub dataset id")
    b.add_argument("--lang", help="target language (a code of `clo languages`)")
    b.add_argument("--languages", action="append", default=[], metavar="FILE",
                   help="a YAML file adding or overriding languages (clo languages --help)")
    b.add_argument("--n", type=int, help="data.n: number of English examples")
    b.add_argument("--translator", help="data.translator.kind (seq2seq, causal, openai, identity)")
    b.add_argument("--translator-model", dest="translator_model",
                   help="data.translator.model: the translation model (hub id, path, offline name, API model)")
    b.add_argument("--model", dest="translator_model", action=_DeprecatedModel, help=argparse.SUPPRESS)
    add_progress_argument(b)
    b.add_argument("--rebuild-cache", action="store_true",
                   help="move the translation cache aside (to <cache>.broken-<time>) and start a new one: "
                        "for a damaged cache; every segment is translated again")
    b.add_argument("--overwrite", action="store_true",
                   help="the output directory holds a build of other inputs: remove its outputs and build "
                        "again (the translation cache is kept); without it such a directory is refused")
    v = sub.add_parser("view", help="export a per-method view (sft, sft-eng, sft-tgt, dpo, clo)")
    v.add_argument("dataset", help="a dataset file (train.jsonl / .parquet)")
    v.add_argument("--view", required=True, help="sft, sft-eng, sft-tgt, dpo or clo")
    add_output_argument(v, "output file: .jsonl, .json (one JSON list) or .parquet (required)", metavar="FILE")
    v.add_argument("--format", dest="style", default="conversational", choices=STYLES,
                   help="conversational: TRL message lists, rendered with the same chat template as clo "
                        "(default); standard: plain strings; llama-factory: sharegpt/OpenAI messages plus a "
                        "dataset_info.json entry beside the file")
    v.add_argument("--name", help="llama-factory: the dataset name in dataset_info.json (default: file stem)")
    v.add_argument("--seed", type=int, default=0, help="shuffle seed of the dpo view")
    c = sub.add_parser("check", help="run the translation checks on parallel data translated elsewhere",
                       description="Read pre-translated parallel rows (x_en, y_en, x_tgt, y_tgt; other "
                                   "column names through --set data.columns.x_tgt=COLUMN; ids made when "
                                   "absent), run the checks of a build (language, length ratio, repetition, "
                                   "untranslated text) and report; with --output, write the passing records "
                                   "(clo's record schema, ready for clo train) and the rejects.")
    add_config_arguments(c)
    c.add_argument("file", help="a parallel file (.jsonl, .json, .parquet, .csv), dataset dir or hub id")
    c.add_argument("--lang", help="the target language of the translations")
    c.add_argument("--languages", action="append", default=[], metavar="FILE",
                   help="a YAML file adding or overriding languages (clo languages --help)")
    add_output_argument(c, "directory for checked.jsonl, rejects.jsonl and summary.json")
    c.add_argument("--strict", action="store_true", help="exit 1 when any record is rejected")


SOURCE_CHOICES = ["auto", "oasst1", "alpaca", "chat", "sharegpt", "trl", "parallel"]
STYLES = ["conversational", "standard", "llama-factory"]


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


def _load_languages(args) -> None:
    from clo import languages

    for f in getattr(args, "languages", None) or ():
        languages.load_file(f)


def _run(args) -> int:
    _load_languages(args)
    if args.data_command == "check":
        return _check(args)
    if args.data_command == "build":
        from clo.cli import load_run_config
        from clo.data.build import build_dataset

        cfg = load_run_config(args.config, _overrides(args), "data build")
        out = Path(args.output) if args.output else Path(cfg.output_dir) / "data"
        build_dataset(cfg, out, progress=not args.no_progress, rebuild_cache=args.rebuild_cache,
                      overwrite=args.overwrite)
        print((out / "summary.md").read_text(encoding="utf-8"))
        return 0
    if args.data_command == "view":
        from clo.data.records import read_records
        from clo.data.views import VIEWS, make_view, write_view

        if args.output is None:
            print("clo data view: the output file is required: --output FILE (.jsonl, .json, .parquet)",
                  file=sys.stderr)
            return 2
        VIEWS.check(args.view)  # before reading the records
        # The suffix says the format; one clo cannot write is refused, not written as JSON lines.
        name = args.output.lower()
        if not name.endswith((".jsonl", ".ndjson", ".json", ".parquet")):
            suffix = Path(args.output).suffix or "(none)"
            print(f"clo data view: {args.output}: unsupported output suffix {suffix}; use .jsonl (JSON lines), "
                  ".json (one JSON list) or .parquet", file=sys.stderr)
            return 2
        records = read_records(args.dataset)
        rows = make_view(args.view, records, args.seed, args.style)
        path = write_view(rows, args.output)
        print(f"{args.view} ({args.style}): {len(rows)} rows from {len(records)} records -> {path}")
        if args.style == "llama-factory":
            from clo.data.views import write_dataset_info

            info = write_dataset_info(path, args.view, args.name)
            print(f"LLaMA-Factory entry {args.name or path.name.split('.')[0]!r} -> {info} "
                  f"(dataset_dir: {path.parent})")
        return 0
    return 2


def _check(args) -> int:
    """``clo data check``: the build's checks on records translated elsewhere."""
    from collections import Counter

    from clo.cli import load_run_config
    from clo.config import load_yaml
    from clo.data.checks import check_records
    from clo.data.records import CrossLingualRecord, write_records
    from clo.data.sources import SourceOptions, load_source
    from clo.io import write_json, write_jsonl

    ov = ([f"lang={json.dumps(args.lang)}"] if args.lang else []) + list(args.overrides)
    given = bool(args.lang) or any(o.split("=", 1)[0].strip() == "lang" for o in args.overrides)
    if not given and not (args.config and "lang" in load_yaml(args.config)):
        raise ValueError("give the target language of the translations: --lang xx (see `clo languages`)")
    cfg = load_run_config(args.config, ov, "data check")
    opts = SourceOptions.from_config(cfg.data, cfg.lang)
    examples = load_source("parallel", args.file, None, None, opts, allow_parallel=True)
    records = [CrossLingualRecord(id=ex.id, tgt_lang=cfg.lang, x_en=ex.x_en, y_en=ex.y_en, x_tgt=ex.x_tgt,
                                  y_tgt=ex.y_tgt, source=ex.source, meta=dict(ex.meta or {}))
               for ex in examples]
    accepted, rejects = check_records(records, cfg.data.checks)
    by_reason = Counter(reason for row in rejects for reason in row["reasons"])
    summary = {"file": args.file, "tgt_lang": cfg.lang, "records_in": len(records),
               "records_out": len(accepted), "pass_rate": round(len(accepted) / len(records), 4),
               "rejects": len(rejects),
               "rejects_by_reason": dict(sorted(by_reason.items()))}
    lines = [(f"{args.file}: {len(accepted)} of {len(records)} records pass the checks for {cfg.lang} "
              f"({100 * summary['pass_rate']:.1f}%); {len(rejects)} rejected")]
    lines += [f"  {k}: {v}" for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1])]
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        write_records(accepted, out / "checked.jsonl")
        write_jsonl(out / "rejects.jsonl", rejects)
        summary["files"] = {"checked": str(out / "checked.jsonl"), "rejects": str(out / "rejects.jsonl")}
        write_json(out / "summary.json", summary)
        lines.append(f"passing records -> {out / 'checked.jsonl'}, rejects -> {out / 'rejects.jsonl'}")
    print("\n".join(lines))
    if not accepted:
        raise ValueError(f"{args.file}: no record passed the checks ({len(rejects)} rejected)")
    return 1 if args.strict and rejects else 0
