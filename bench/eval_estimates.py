"""Wall-time estimates per evaluation job at the paper's sizes, from measured rates.

Work per job (``configs/paper.yaml``): MMMLU 14,042 questions x expected attempts (1 + f + f^2 +
f^3 for an extraction-failure rate f, 3 retries), BELEBELE 900 questions per language, AlpacaEval
805 responses plus 805 judge requests. Rates come from ``bench/results``:

- ``generation_throughput.json`` (``bench/generation_throughput.py``): vLLM generated tokens/s,
  and the transformers backend's at batch 8;
- ``eval_throughput.json`` (``bench/eval_throughput.py``): BELEBELE questions/s;
- ``judge_throughput.json`` (``bench/judge_throughput.py``): the judge's speed-up from concurrency;
- ``eval_estimates_measure.json`` (``--measure``, this script): the transformers backend on MMMLU
  prompts, batch 8 without stop strings (the old default) and token-budget batches with them:
  decode steps/s, tokens per response.

The models of the time per job:

- transformers (static batches): a batch runs until its last row ends; with many rows some row
  nearly always reaches the budget, so each batch counts ``budget`` decode steps (an upper bound
  when every row stops early); batches = items / rows; time = steps / measured steps/s.
- vLLM (continuous batching): generated tokens / measured tokens/s, with the mean response length
  ``--mmmlu-tokens`` / ``--alpaca-tokens`` (the stop strings end MMMLU responses at the answer line).
- judge: requests x latency / concurrency (``--judge-latency``: the per-request seconds of the real
  endpoint; default 3.7 s, the middle of 30-70 minutes reported per 805 sequential requests),
  bounded below by requests / rpm and tokens / tpm when given.

The rates are those of the machine and model they were measured on (see each file's meta): run
the three benchmarks and ``--measure`` on the GPU to get the GPU's figures.

    python bench/eval_estimates.py                  # from bench/results
    python bench/eval_estimates.py --measure        # first measure the transformers backend here
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MMMLU_N, BELEBELE_N, ALPACA_N = 14_042, 900, 805


def measure(model_name: str, data_dir: Path, n: int, max_new_tokens: int, out: Path) -> dict:
    """The transformers backend on ``n`` English MMMLU prompts, sampled as the paper samples: batch 8
    without stop strings, batch 8 with them, and token-budget batches with them."""
    import torch

    from clo import languages
    from clo.eval.generation import CPU_BATCH_TOKENS, auto_batch_tokens, iter_generate_ids
    from clo.eval.mmmlu import load_rows, render_prompt, stop_strings, stratified_sample
    from clo.formatting import encode_prompt
    from clo.models import load_model

    en = languages.get("en")
    rows = stratified_sample(load_rows(en, data_dir), n, seed=0)
    prompts = [render_prompt(r, en) for r in rows]
    model, tok = load_model(model_name)
    budget = auto_batch_tokens(model)
    prompt_tokens = sum(len(encode_prompt(tok, p)) for p in prompts) / len(prompts)
    kw = {"max_new_tokens": max_new_tokens, "temperature": 0.6, "top_p": 0.9, "seed": 0}
    list(iter_generate_ids(model, tok, prompts[:2], **kw, batch_size=2))  # untimed warm-up
    runs = {}
    for name, extra in (("batch 8, no stop strings", {"batch_size": 8, "batch_tokens": 10**9}),
                        ("batch 8, stop strings", {"batch_size": 8, "batch_tokens": 10**9, "stop": stop_strings(en)}),
                        (f"token budget {budget}, stop strings", {"stop": stop_strings(en)})):
        t0 = t = time.perf_counter()
        steps = tokens = 0
        per_batch = []  # (rows, decode steps, seconds)
        for _idx, out_rows in iter_generate_ids(model, tok, prompts, **kw, **extra):
            now = time.perf_counter()
            per_batch.append((len(out_rows), max(len(r) for r in out_rows), now - t))
            t = now
            steps += per_batch[-1][1]
            tokens += sum(len(r) for r in out_rows)
        secs = time.perf_counter() - t0
        batches = len(per_batch)
        runs[name] = {"seconds": secs, "batches": batches, "per_batch": per_batch, "decode_steps": steps,
                      "tokens": tokens, "steps_per_s": steps / secs, "tokens_per_s": tokens / secs,
                      "tokens_per_response": tokens / len(prompts), "rows": max(b[0] for b in per_batch)}
        print(f"{name}: {secs:.1f}s, {batches} batches, {steps} steps, {tokens / len(prompts):.0f} tokens/response",
              file=sys.stderr, flush=True)
    # seconds per decode step = a + b x rows, least squares over every batch (weighted by its steps)
    pts = [(r, secs / st, st) for run in runs.values() for r, st, secs in run["per_batch"] if st]
    w = sum(p[2] for p in pts)
    mr, mt = sum(p[0] * p[2] for p in pts) / w, sum(p[1] * p[2] for p in pts) / w
    var = sum(p[2] * (p[0] - mr) ** 2 for p in pts)
    b = sum(p[2] * (p[0] - mr) * (p[1] - mt) for p in pts) / var if var else 0.0
    step_model = {"a_s": max(mt - b * mr, 0.0), "b_s_per_row": max(b, 0.0)}
    doc = {"step_seconds": step_model, "meta": {"model": model_name, "n": len(prompts), "max_new_tokens": max_new_tokens,
                    "device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
                    "batch_tokens": budget, "cpu_batch_tokens": CPU_BATCH_TOKENS,
                    "mean_prompt_tokens": prompt_tokens}, "runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_estimates_measure.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimates(args, results: Path) -> tuple[list[list[str]], list[str]]:
    gen, bel = _load(results / "generation_throughput.json"), _load(results / "eval_throughput.json")
    judge, meas = _load(results / "judge_throughput.json"), _load(results / "eval_estimates_measure.json")
    notes = []
    f = args.mmmlu_failure_rate
    attempts = 1 + f + f**2 + f**3
    mmmlu_items = MMMLU_N * attempts
    alpaca_items = ALPACA_N

    # transformers: decode steps/s at batch 8 and at the rows the token budget holds
    steps8 = steps_tb = rows_tb = None
    prompt_tokens = args.prompt_tokens
    if meas:
        a, b = meas["step_seconds"]["a_s"], meas["step_seconds"]["b_s_per_row"]
        prompt_tokens = meas["meta"]["mean_prompt_tokens"]
        budget_tokens = args.batch_tokens or meas["meta"]["batch_tokens"]
        rows_tb = max(1, budget_tokens // math.ceil(prompt_tokens + args.budget))
        steps8, steps_tb = 1 / (a + 8 * b), 1 / (a + rows_tb * b)
        notes.append(f"transformers: {meas['meta']['model']} on {meas['meta']['device']} "
                     f"({meas['meta']['torch_threads']} threads): a decode step takes {a * 1000:.0f} ms + "
                     f"{b * 1000:.1f} ms a row (fit over the measured batches), {steps8:.2f} steps/s at batch 8; "
                     f"a budget of {budget_tokens} tokens holds {rows_tb} rows of {prompt_tokens:.0f}-token prompts "
                     f"+ {args.budget} new tokens ({steps_tb:.2f} steps/s); measured MMMLU responses "
                     f"{meas['runs']['batch 8, stop strings']['tokens_per_response']:.0f} tokens on average")
    elif gen:
        steps8 = gen["transformers"]["tokens_per_s"] / gen["transformers"]["batch_size"]
        notes.append(f"transformers: {steps8:.2f} steps/s at batch 8 (lower bound from generation_throughput.json)")
    vllm_tps = gen["vllm_backend"]["tokens_per_s"] if gen else None
    if gen:
        notes.append(f"vLLM: {vllm_tps} tokens/s ({gen['model']}, {gen['dtype']}, {gen['device']}, "
                     f"vLLM {gen.get('vllm')})")
    bel_qps = {r["lang"]: r["ours_qps"] for r in bel["results"]} if bel else {}
    if bel:
        notes.append(f"BELEBELE: {bel_qps.get('en', 0):.2f} q/s (English template), {bel_qps.get('ko', 0):.2f} q/s "
                     f"(Korean template) ({bel['meta']['model']}, {bel['meta']['device']})")
    speedup = None
    if judge:
        c = next((r for r in judge["concurrent"] if r["concurrency"] == args.judge_concurrency), None)
        if c:
            speedup = c["ratio"]
            notes.append(f"judge: {speedup:.1f}x at concurrency {args.judge_concurrency} against a "
                         f"{judge['meta']['latency_s'] * 1000:.0f} ms fake server "
                         f"({c['identical_verdicts']}/{judge['meta']['n']} identical verdicts)")
    speedup = speedup or args.judge_concurrency

    def tf(items: float, rows: int | None, steps_per_s: float | None) -> float | None:
        if rows is None or steps_per_s is None:
            return None
        return math.ceil(items / rows) * args.budget / steps_per_s

    def judge_time(concurrent: bool) -> float:
        requests = alpaca_items * (1 + args.judge_retry_rate)
        t = requests * args.judge_latency / (speedup if concurrent else 1)
        if args.judge_rpm:
            t = max(t, requests / args.judge_rpm * 60)
        if args.judge_tpm:
            t = max(t, requests * args.judge_tokens / args.judge_tpm * 60)
        return t

    rows = [
        ["MMMLU (per model, language, method)", f"{MMMLU_N:,} q x {attempts:.2f} attempts",
         _hours(tf(mmmlu_items, 8, steps8)), _hours(tf(mmmlu_items, rows_tb, steps_tb)),
         _hours(mmmlu_items * args.mmmlu_tokens / vllm_tps if vllm_tps else None), "-", "-"],
        ["BELEBELE (per language)", f"{BELEBELE_N} q",
         _hours(BELEBELE_N / bel_qps["ko"] if "ko" in bel_qps else None), "same", "same (log-likelihoods)", "-", "-"],
        ["AlpacaEval generation (per model, language, method)", f"{ALPACA_N} responses",
         _hours(tf(alpaca_items, 8, steps8)), _hours(tf(alpaca_items, rows_tb, steps_tb)),
         _hours(alpaca_items * args.alpaca_tokens / vllm_tps if vllm_tps else None), "-", "-"],
        ["AlpacaEval judge (per job)", f"{ALPACA_N} requests", "-", "-", "-",
         _hours(judge_time(False)), _hours(judge_time(True))],
    ]
    notes.append(f"assumptions: budget {args.budget} new tokens, prompts of {prompt_tokens:.0f} tokens; MMMLU "
                 f"failure rate {f}; mean response {args.mmmlu_tokens} tokens (MMMLU, ended by the answer line) and "
                 f"{args.alpaca_tokens} (AlpacaEval); judge {args.judge_latency} s a request, retry rate "
                 f"{args.judge_retry_rate}, concurrency {args.judge_concurrency}"
                 + (f", rpm {args.judge_rpm}" if args.judge_rpm else "")
                 + (f", tpm {args.judge_tpm} ({args.judge_tokens} tokens a request)" if args.judge_tpm else ""))
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--measure", action="store_true", help="measure the transformers backend here first")
    p.add_argument("--model", default="smollm2-135m-instruct", help="--measure: the model")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--n", type=int, default=24, help="--measure: MMMLU prompts")
    p.add_argument("--measure-new-tokens", type=int, default=96, help="--measure: max_new_tokens")
    p.add_argument("--budget", type=int, default=1024, help="max_new_tokens of the paper's jobs")
    p.add_argument("--prompt-tokens", type=float, default=160, help="mean prompt tokens (without --measure data)")
    p.add_argument("--batch-tokens", type=int, default=None, help="token budget (default: the measured device's)")
    p.add_argument("--mmmlu-failure-rate", type=float, default=0.1)
    p.add_argument("--mmmlu-tokens", type=int, default=300, help="mean MMMLU response tokens")
    p.add_argument("--alpaca-tokens", type=int, default=400, help="mean AlpacaEval response tokens")
    p.add_argument("--judge-latency", type=float, default=3.7, help="seconds per judge request")
    p.add_argument("--judge-retry-rate", type=float, default=0.02)
    p.add_argument("--judge-concurrency", type=int, default=16)
    p.add_argument("--judge-rpm", type=int, default=None)
    p.add_argument("--judge-tpm", type=int, default=None)
    p.add_argument("--judge-tokens", type=int, default=1500, help="tokens per judge request (for --judge-tpm)")
    args = p.parse_args(argv)
    results = Path(args.results)
    if args.measure:
        measure(args.model, Path(args.data_dir), args.n, args.measure_new_tokens, results)
    rows, notes = estimates(args, results)
    md = [("| job | work | transformers, batch 8 (before) | transformers, token budget + stop strings | "
           "vLLM + stop strings | judge, sequential | judge, concurrent |"), "|---|---|---|---|---|---|---|"]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += [""] + [f"- {n}" for n in notes]
    text = "\n".join(md) + "\n"
    (results / "eval_estimates.md").write_text("# Wall-time estimates per evaluation job (paper sizes)\n\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
