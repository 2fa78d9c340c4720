"""``clo demo``: teach SmolLM2-135M-Instruct German with SFT and CLO on a laptop CPU, end to end.

What it does (a grid run underneath, so an interrupted demo resumes where it stopped):

1. English instruction pairs: oasst1 from the hub when it is reachable, else the local Alpaca-style
   set ``sft_en/alpaca_en_demo.json`` of the shared data directory (``$CLO_SHARED_DATA``, else
   ``../shared/data`` next to the repository); only short pairs (``data.max_chars``), so that
   the CPU budget holds.
2. Translation into German with the offline causal translator (Gemma 3 270M, few-shot).
3. SFT and CLO training of the attention projections.
4. Evaluation of the base, SFT and CLO models: the share of answers in German to held-out German
   prompts (Language Confusion Benchmark, monolingual and cross-lingual), BELEBELE German and
   English, and an English MMLU subset.
5. The report (tables, CSV, Figure 3) and, printed, the three models' answers to two German
   prompts side by side.

The sizes below were chosen so that the whole demo fits 30 minutes on 2 CPU cores (see
docs/experiments.md for the measured timings); ``--pairs`` and ``--set`` change them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

from clo.paths import repo_root, shared_data_dir  # noqa: F401  (re-exported for callers)

log = logging.getLogger(__name__)

HELP = "end-to-end demo on SmolLM2-135M-Instruct, German, on a laptop CPU (resumable)"

MODEL = "smollm2-135m-instruct"
LANG = "de"

#: The two German prompts whose answers are shown side by side (not in any training set).
SAMPLE_PROMPTS = [
    "Wie kann ich abends besser einschlafen? Gib mir drei Tipps.",
    "Erkläre einem Kind in zwei Sätzen, warum der Himmel blau ist.",
]

#: Demo sizes. Measured on 2 shared CPU cores; see docs/experiments.md.
DEFAULT_PAIRS = 96
MAX_PAIR_CHARS = 360  # prompt + response characters of a local English pair kept for the demo
MAX_LENGTH = 192  # training tokens per sequence
BELEBELE_LIMIT = 64
MMLU_LIMIT = 32
FIDELITY_LIMIT = 48
MAX_NEW_TOKENS = 64


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (never when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    import urllib.request

    try:
        with urllib.request.urlopen("https://huggingface.co/api/datasets/OpenAssistant/oasst1", timeout=timeout) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - any failure means: use the local data
        return False


def heldout_prompts(shared: Path, out: Path, n: int, max_chars: int = 300) -> Path:
    """``n`` German prompts of the Language Confusion Benchmark, half monolingual (written in
    German), half cross-lingual (English, asking for a German answer), evenly spread over each
    split; none of them is in the training data. Prompts longer than ``max_chars`` are left out:
    the benchmark has a few of thousands of tokens, which would dominate a CPU demo's time."""
    from clo.eval.fidelity import load_lcb

    prompts = []
    for split, k in (("monolingual", n - n // 2), ("crosslingual", n // 2)):
        rows = [r for r in load_lcb(shared, LANG, split) if len(r["prompt"]) <= max_chars]
        if len(rows) < k:
            raise ValueError(f"{shared}/language_confusion/{split}: only {len(rows)} German prompts of "
                             f"<= {max_chars} characters, the demo needs {k}")
        prompts += [rows[i * len(rows) // k]["prompt"] for i in range(k)]
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(prompts, ensure_ascii=False, indent=1)
    if not out.is_file() or out.read_text(encoding="utf-8") != text:
        out.write_text(text, encoding="utf-8")
    return out


def demo_tree(output_dir: Path, shared: Path, pairs: int, source: dict) -> dict:
    """The demo as a grid config (``clo demo --print-config`` shows it as YAML)."""
    return {
        "name": "demo",
        "output_dir": str(output_dir),
        "models": [{"name": "smollm2-135m", "spec": MODEL}],
        "langs": [LANG],
        "methods": ["sft", "clo"],
        "sizes": [None],
        "include_base": True,
        "baseline": "sft",
        "eval_jobs": [
            {"task": "fidelity", "opts": {"prompts_file": str(heldout_prompts(
                shared, output_dir / "heldout_prompts_de.json", FIDELITY_LIMIT))}},
            {"task": "belebele", "opts": {"limit": BELEBELE_LIMIT}},
            {"task": "belebele", "lang": "en", "opts": {"limit": BELEBELE_LIMIT}},
            # One attempt: a 135M model rarely writes "Answer: X", and retries triple the cost.
            {"task": "mmmlu", "lang": "en", "opts": {"limit": MMLU_LIMIT, "retries": 0}},
        ],
        "samples": SAMPLE_PROMPTS,
        "base": {
            "data": {
                **source,
                "n": pairs,
                "max_chars": MAX_PAIR_CHARS,  # short pairs: translation and training time grow with length
                "val_fraction": 0.125,
                "subsets": [],
                # Small batches on a CPU: progress shows (and is cached) every few seconds.
                "translator": {"kind": "causal", "model": "gemma-3-270m", "device": "cpu", "batch_size": 16},
            },
            "train": {
                "trainable": "attention",
                "batch_size": 8,
                "max_length": MAX_LENGTH,
                "epochs": 1,
                # 135M parameters and a few dozen examples: the paper's 5e-5 barely moves the
                # model in 7 steps, so the demo learns faster.
                "lr": 3e-4,
                "min_lr": 1e-5,
                "eval_every": 4,
                "dtype": "float32",
            },
            "eval": {
                "data_dir": str(shared),
                "batch_size": 8,
                "max_new_tokens": MAX_NEW_TOKENS,
            },
        },
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="runs/demo", help="grid directory (default runs/demo)")
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help=f"English pairs (default {DEFAULT_PAIRS})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a grid key, e.g. --set base.train.lr=1e-4 (repeatable)")
    parser.add_argument("--fresh", action="store_true", help="delete the demo directory first (no resume)")
    parser.add_argument("--print-config", action="store_true", help="print the demo's grid config and exit")
    parser.add_argument("--no-progress", action="store_true")


def _side_by_side(columns: list[tuple[str, str]], width: int) -> str:
    col = max(20, (width - 3 * (len(columns) - 1)) // len(columns))
    wrapped = []
    for head, text in columns:
        lines = [head.upper(), "-" * min(col, len(head))]
        for par in (text or "—").splitlines():
            lines += textwrap.wrap(par, col) or [""]
        wrapped.append(lines)
    height = max(len(w) for w in wrapped)
    lines = []
    for i in range(height):
        lines.append(" | ".join((w[i] if i < len(w) else "").ljust(col) for w in wrapped).rstrip())
    return "\n".join(lines)


def summary(grid_dir: Path, width: int = 120) -> str:
    """Headline numbers and the side-by-side answers, from the stored results."""
    from clo.report import collect

    res = collect(grid_dir)
    lines = ["", "Headline numbers (% ± SE; — = not finished):"]
    heads = [("fidelity_de", "rate", "answers in German"), ("belebele_de", "accuracy", "BELEBELE deu"),
             ("belebele_en", "accuracy", "BELEBELE eng"), ("mmmlu_en", "accuracy", "MMLU (en)")]
    lines.append(f"  {'':<8}" + "".join(f"{h:>20}" for _, _, h in heads))
    variants = res.main_variants()
    model = res.cells()[0][0] if res.cells() else ""
    for v in variants:
        r = res.find(model, LANG, v)
        cells = [r.cell(k, m).markdown() if r else "—" for k, m, _ in heads]
        lines.append(f"  {v:<8}" + "".join(f"{c:>20}" for c in cells))
    for p in SAMPLE_PROMPTS:
        cols = []
        for v in variants:
            r = res.find(model, LANG, v)
            ans = next((s["answer"] for s in (r.samples or []) if s["prompt"] == p), None) if r else None
            cols.append((v, ans or "—"))
        lines += ["", f"Prompt: {p}", _side_by_side(cols, width)]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from clo.experiments.config import dump_grid, grid_from_dict
    from clo.experiments.grid import run_grid

    t0 = time.perf_counter()
    out = Path(args.output_dir)
    if args.pairs <= 0:
        raise SystemExit(f"clo demo: --pairs must be positive, got {args.pairs}")
    shared = shared_data_dir()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    if hub_reachable():
        source, where = {"source": "oasst1", "path": None}, "oasst1 (hub)"
    else:
        path = shared / "sft_en" / "alpaca_en_demo.json"
        source, where = {"source": "alpaca", "path": str(path)}, str(path)
    grid = grid_from_dict(demo_tree(out, shared, args.pairs, source), "clo demo", args.overrides)
    if args.print_config:
        print(dump_grid(grid))
        return 0
    print(f"clo demo: {MODEL} -> German; English pairs from {where}; {grid.base.data.n} pairs; "
          f"methods {', '.join(m.name for m in grid.methods)}; output {out}", flush=True)
    result = run_grid(grid, progress=not args.no_progress)
    print(summary(out, shutil.get_terminal_size((120, 20)).columns))
    print()
    if result.report:
        print(f"Report: {Path(result.report['dir']) / 'report.md'} (tables as CSV, Figure 3 as PNG alongside)")
    print(f"Wall time {time.perf_counter() - t0:.0f}s ({len(result.ran)} stages ran, {len(result.skipped)} resumed).")
    for key, err in result.failures.items():
        print(f"FAILED {key}: {err}", file=sys.stderr)
    return 0 if result.ok else 1
