"""``clo demo``: teach SmolLM2-135M-Instruct German with SFT and CLO on a laptop CPU, end to end.

What it does (a grid run underneath, so an interrupted demo resumes where it stopped):

1. English instruction pairs: oasst1 from the hub when it is reachable, else the local Alpaca-style
   set ``sft_en/alpaca_en_demo.json`` of the shared data directory (``$CLO_SHARED_DATA``, else
   a ``shared/data`` folder beside the repository); only short pairs (``data.max_chars``), so that
   the CPU budget holds.
2. Translation into German with the offline causal translator (Gemma 3 270M, few-shot).
3. SFT and CLO training of the attention projections.
4. Evaluation of the base, SFT and CLO models, on what CLO is trained to change: on held-out
   parallel quadruples (English pairs the training never saw, translated by the same translator),
   whether the German answer is the more likely one per token for a German prompt and the English
   one for an English prompt, and the per-token NLL of each (deterministic, compared item by item
   between models); and the language of generated answers to held-out German prompts (Language
   Confusion Benchmark, monolingual and cross-lingual), with echoes of the prompt counted apart.
5. The report (tables, CSV) and, printed, the headline numbers, the paired differences between
   the models and their answers to two German prompts side by side.

BELEBELE and MMLU are left out: at 135M parameters the model picks one option letter for almost
every BELEBELE question and loses MMLU's answer line, so at the demo's sizes they measured the
option prior and the answer format, within their noise (docs/experiments.md).

The sizes below were chosen so that the whole demo fits 30 minutes on 2 CPU cores (see
docs/experiments.md for the measured timings); ``--pairs`` and ``--set`` change them.
"""

from __future__ import annotations

import argparse
import contextlib
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
FIDELITY_LIMIT = 48
FIDELITY_NEW_TOKENS = 48  # enough words to tell the language; generation is most of fidelity's time
MAX_NEW_TOKENS = 64  # the side-by-side answers
#: Held-out quadruples for the preference task: English pairs of at most HELDOUT_MAX_CHARS that no
#: run trains on, translated like the training data. HELDOUT_PAIRS are translated first (about
#: 78 % pass the checks); more follow, HELDOUT_PAIRS // 4 at a time, until HELDOUT_MIN passed.
HELDOUT_PAIRS = 88
HELDOUT_MIN = 64
HELDOUT_MAX_CHARS = 240


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


def heldout_path(output_dir: Path) -> Path:
    """Where the demo keeps its held-out quadruples (:func:`build_heldout`)."""
    return Path(output_dir) / f"heldout_quadruples_{LANG}.jsonl"


def heldout_pool(shared: Path, training: list[str], max_chars: int = HELDOUT_MAX_CHARS) -> list[dict]:
    """The local English pairs (Alpaca format) of at most ``max_chars`` characters whose prompt is
    none of ``training`` (the English prompts the runs train on), in file order."""
    from clo.data.sources import load_source

    path = shared / "sft_en" / "alpaca_en_demo.json"
    rows = json.loads(path.read_text(encoding="utf-8"))
    # Repeated pairs are read once; the rows have no ids, so each example's id is its row's
    # position (alpaca-<i>), which finds the row back. Silent: the data stage reads the same file
    # and says what it read (the same line, else printed twice).
    with _quiet("clo.data.sources"):
        examples = load_source("alpaca", str(path), None)
    seen = set(training)
    return [rows[int(ex.id.rpartition("-")[2])] for ex in examples
            if len(ex.x_en) + len(ex.y_en) <= max_chars and ex.x_en not in seen]


@contextlib.contextmanager
def _quiet(logger: str):
    """The INFO lines of ``logger`` left out for the duration (warnings still pass)."""
    lg = logging.getLogger(logger)
    old = lg.level
    lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lg.setLevel(old)


def build_heldout(grid, shared: Path, *, progress: bool = True) -> dict:
    """Translate held-out English pairs with the grid's translator until at least
    :data:`HELDOUT_MIN` quadruples pass the checks; write them to :func:`heldout_path`.

    A data build (``clo.data.build``) into ``<output_dir>/heldout/de`` with no validation split;
    an unchanged build is read back, a larger one reuses the translation cache. Returns
    ``{"path", "pairs", "passed", "seconds"}``."""
    from clo.data.build import build_dataset, build_inputs, fingerprint
    from clo.data.sources import load_examples
    from clo.experiments.config import expand

    t0 = time.perf_counter()
    out = Path(grid.output_dir)
    cfg = expand(grid)[-1].config  # a trained run's: the grid's data section and translator
    # The grid's data stage reads the same examples and logs what it read: this read says nothing,
    # or its line would be printed twice.
    with _quiet("clo.data.sources"):
        training = [ex.x_en for ex in load_examples(cfg.data, cfg.lang)] if cfg.data.path else []
    pool = heldout_pool(shared, training)
    bdir = out / "heldout" / LANG
    done = bdir / "summary.json"

    def config(n: int):
        src = bdir.parent / f"heldout_en_{n}.json"
        text = json.dumps(pool[:n], ensure_ascii=False, indent=1)
        if not src.is_file() or src.read_text(encoding="utf-8") != text:
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_text(text, encoding="utf-8")
        data = cfg.data.model_copy(update={"source": "alpaca", "path": str(src), "n": n, "max_chars": None,
                                           "val_fraction": 0.0, "subsets": []})
        return cfg.model_copy(update={"data": data})

    n, passed = min(HELDOUT_PAIRS, len(pool)), 0
    summ = json.loads(done.read_text(encoding="utf-8")) if done.is_file() else {}
    for f in bdir.parent.glob("heldout_en_*.json"):  # resume at the size the last run finished with
        k = int(f.stem.rpartition("_")[2])
        if k > n and k <= len(pool) and summ.get("fingerprint") == fingerprint(build_inputs(config(k))):
            n = k
    while True:
        hcfg = config(n)
        if summ.get("fingerprint") != fingerprint(build_inputs(hcfg)):
            summ = build_dataset(hcfg, bdir, progress=progress, overwrite=True)
        passed = summ["records_out"]
        if passed >= HELDOUT_MIN or n >= len(pool):
            break
        n = min(len(pool), n + max(HELDOUT_PAIRS // 4, HELDOUT_MIN - passed))
    if passed < HELDOUT_MIN:
        log.warning("only %d held-out quadruples passed the checks (of %d pairs, all there are); the demo "
                    "asks for %d", passed, n, HELDOUT_MIN)
    target = heldout_path(out)
    text = (bdir / "train.jsonl").read_text(encoding="utf-8")
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")
    return {"path": str(target), "pairs": n, "passed": passed, "seconds": round(time.perf_counter() - t0, 1)}


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
            # What CLO is trained to change, on quadruples no run trained on (build_heldout).
            {"task": "preference", "opts": {"held_out_file": str(heldout_path(output_dir))}},
            {"task": "fidelity", "opts": {"prompts_file": str(heldout_prompts(
                shared, output_dir / "heldout_prompts_de.json", FIDELITY_LIMIT)),
                "max_new_tokens": FIDELITY_NEW_TOKENS}},
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
    from clo.cli import add_output_argument, add_progress_argument

    add_output_argument(parser, "grid directory (default runs/demo)", default="runs/demo")
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help=f"English pairs (default {DEFAULT_PAIRS})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a grid key, e.g. --set base.train.lr=1e-4 (repeatable)")
    parser.add_argument("--fresh", action="store_true", help="delete the demo directory first (no resume)")
    parser.add_argument("--print-config", action="store_true", help="print the demo's grid config and exit")
    add_progress_argument(parser)


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


#: The headline: (eval key, metric, column head).
HEADLINE = [("fidelity_de", "rate", "German answers"), ("fidelity_de", "echo_rate", "echoes"),
            ("fidelity_de", "rate_excluding_echoes", "German, no echo"),
            ("preference_de", "tgt_preferred", "prefers de (de)"), ("preference_de", "en_preferred", "prefers en (en)"),
            ("preference_de", "nll_tgt", "NLL de|de"), ("preference_de", "nll_en", "NLL en|en")]
#: The paired differences printed: preference-table metric -> column head.
PAIRED = {"tgt_preferred": "prefers de (de)", "en_preferred": "prefers en (en)", "nll_tgt": "NLL de|de",
          "nll_en": "NLL en|en"}


def summary(grid_dir: Path, width: int = 120) -> str:
    """Headline numbers, the paired differences and the side-by-side answers, from the stored results."""
    from clo.report import collect
    from clo.report.tables import PREFERENCE_ROWS, preference_table

    res = collect(grid_dir)
    w = 22  # "62.5 ± 4.1 (n=140)" and a gap
    lines = ["", "Headline numbers (% ± SE; NLL in nats per token ± SE; — = not finished):",
             f"  German answers: of the answers to {FIDELITY_LIMIT} held-out German prompts, the share in German;",
             "  echoes: answers that repeat the prompt; German, no echo: the share in German of the others.",
             "  prefers de (de): held-out German prompts whose German answer is the more likely one per token;",
             "  prefers en (en): the same for English prompts. NLL: of the answer in the prompt's language."]
    lines.append(f"  {'':<6}" + "".join(f"{h:>{w}}" for _, _, h in HEADLINE))
    variants = res.main_variants()
    model = res.cells()[0][0] if res.cells() else ""
    for v in variants:
        r = res.find(model, LANG, v)
        cells = [r.cell(k, m).markdown() if r else "—" for k, m, _ in HEADLINE]
        lines.append(f"  {v:<6}" + "".join(f"{c:>{w}}" for c in cells))
    table = preference_table(res)
    n_var = len(variants)
    pair_cols = table.columns[n_var:]
    if table.rows and pair_cols:
        label = {m: lab.format(lang=LANG) for m, lab in PREFERENCE_ROWS}
        by_label = {keys[2]: cells for keys, cells in table.rows}
        n = next((r.metrics["preference_de"].get("n") for r in res.runs.values() if "preference_de" in r.metrics), "?")
        lines += ["", (f"Paired differences on the same {n} held-out quadruples (points, NLL in nats per token; "
                       "± paired SE):"), f"  {'':<12}" + "".join(f"{h:>{w}}" for h in PAIRED.values())]
        for j, col in enumerate(pair_cols):
            cells = [by_label[label[m]][n_var + j].markdown() for m in PAIRED]
            lines.append(f"  {col:<12}" + "".join(f"{c:>{w}}" for c in cells))
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
    out = Path(args.output)
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
    import clo.eval.preference  # noqa: F401  (registers the task)

    held = build_heldout(grid, shared, progress=not args.no_progress)
    print(f"held-out quadruples: {held['passed']} of {held['pairs']} English pairs passed the translation checks "
          f"({held['seconds']:.0f}s) -> {held['path']}", flush=True)
    result = run_grid(grid, progress=not args.no_progress)
    print(summary(out, shutil.get_terminal_size((120, 20)).columns))
    print()
    if result.report:
        print(f"Report: {Path(result.report['dir']) / 'report.md'} (tables as CSV alongside; what the demo "
              "does not run offline is listed there with the command that runs it)")
    print(f"Wall time {time.perf_counter() - t0:.0f}s ({len(result.ran)} stages ran, {len(result.skipped)} resumed).")
    for key, err in result.failures.items():
        print(f"FAILED {key}: {err}", file=sys.stderr)
    return 0 if result.ok else 1
