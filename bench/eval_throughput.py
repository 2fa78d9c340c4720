"""BELEBELE throughput: clo's evaluator vs lm-evaluation-harness on the same model, rows and template.

Both score the same rows with the same prompt text at the same batch size on the same loaded
model; runs alternate (ours, harness, ours, harness, ...) so that load from other processes hits
both alike, and the median over repeats is reported. The harness time covers
``HFLM.loglikelihood`` only (tokenisation and scoring), not its task set-up, which favours the
harness. Agreement is the share of identical per-item predictions.

Templates: the harness's English one on English rows, and the Korean native template (option
labels 가) 나) 다) 라), several tokens each). Without Korean BELEBELE data locally, the Korean
template is rendered on the English rows: a throughput measurement, not a Korean accuracy.

    python bench/eval_throughput.py --data-dir ../shared/data --n 48 --batch-size 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--n", type=int, default=48, help="BELEBELE questions (the first n English rows)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default=None)
    p.add_argument("--output", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from clo import languages
    from clo.eval.belebele import load_rows, predict
    from clo.eval.harness import harness_predict
    from clo.models import load_model

    model, tok = load_model(args.model, device=args.device)
    en = languages.get("en")
    rows = load_rows(en, Path(args.data_dir), args.n)
    ko_local = (Path(args.data_dir) / "belebele" / "kor_Hang.jsonl").is_file()
    ko_rows = load_rows(languages.get("ko"), Path(args.data_dir), args.n) if ko_local else rows
    cases = [("en", "harness", rows, "English rows"),
             ("ko", "native", ko_rows, "Korean rows" if ko_local else "English rows, Korean template")]
    results = []
    for code, template, case_rows, data_note in cases:
        lang = languages.get(code)
        # One untimed pass each: first calls pay for lazy initialisation.
        predict(model, tok, case_rows[: args.batch_size], lang, template=template, batch_size=args.batch_size,
                progress=False)
        harness_predict(model, tok, case_rows[: args.batch_size], lang, template=template, batch_size=args.batch_size)
        ours_t, harness_t, ours_c, harness_c = [], [], [], []
        for r in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            ours = predict(model, tok, case_rows, lang, template=template, batch_size=args.batch_size, progress=False)
            ours_t.append(time.perf_counter() - t0)
            ours_c.append(time.process_time() - c0)
            tm: dict = {}
            preds, ll, secs = harness_predict(model, tok, case_rows, lang, template=template,
                                              batch_size=args.batch_size, timings=tm)
            harness_t.append(secs)
            harness_c.append(tm["cpu"])
            print(f"[{code}/{template}] repeat {r + 1}/{args.repeats}: ours {ours_t[-1]:.2f}s "
                  f"(cpu {ours_c[-1]:.2f}s), harness {secs:.2f}s (cpu {tm['cpu']:.2f}s)", file=sys.stderr, flush=True)
        n = len(case_rows)
        agree = sum(o["pred"] == h for o, h in zip(ours, preds)) / n
        max_diff = max(abs(a - b) for o, h in zip(ours, ll) for a, b in zip(o["loglik"], h))
        q_ours, q_h = n / statistics.median(ours_t), n / statistics.median(harness_t)
        results.append({
            "lang": code, "template": template, "data": data_note, "n": n, "batch_size": args.batch_size,
            "ours_qps": q_ours, "harness_qps": q_h, "ratio": q_ours / q_h, "agreement": agree,
            # CPU seconds are less disturbed than wall time by other processes on a shared machine
            "ratio_cpu_time": statistics.median(harness_c) / statistics.median(ours_c),
            "ours_cpu_seconds": ours_c, "harness_cpu_seconds": harness_c,
            "max_abs_loglik_diff": max_diff, "ours_seconds": ours_t, "harness_seconds": harness_t,
            "accuracy_ours": sum(o["correct"] for o in ours) / n,
        })
    import lm_eval

    meta = {"model": args.model, "device": str(model.device), "torch_threads": torch.get_num_threads(),
            "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "lm_eval": lm_eval.__version__, "repeats": args.repeats}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_throughput.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    md = [f"# BELEBELE throughput: clo vs lm-evaluation-harness {lm_eval.__version__}", "",
          (f"model `{args.model}`, device {meta['device']}, {meta['torch_threads']} torch threads, "
           f"median of {args.repeats} alternating runs"), "",
          ("| template | data | n | batch | clo q/s | harness q/s | ratio (wall) | ratio (CPU time) | agreement "
           "| max abs Δ log-lik |"),
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        md.append(f"| {r['lang']}/{r['template']} | {r['data']} | {r['n']} | {r['batch_size']} | "
                  f"{r['ours_qps']:.2f} | {r['harness_qps']:.2f} | {r['ratio']:.2f}x | {r['ratio_cpu_time']:.2f}x | "
                  f"{r['agreement']:.3f} | "
                  f"{r['max_abs_loglik_diff']:.2e} |")
    (out / "eval_throughput.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
