"""Judge throughput: sequential vs concurrent requests against a local fake OpenAI-compatible server.

The server (a separate process, so that it does not share the interpreter lock with the client)
answers every chat completion after ``--latency`` seconds with a ranking that depends on the
request alone, as a judge at temperature 0 would. The items are the AlpacaEval instructions with
two real answers each (``alpaca_eval/text_davinci_003.json`` and ``gpt4_1106_preview.json`` under
the data directory; synthetic texts without it), so the requests have the paper's sizes. Both runs
go through ``clo.eval.judge.judge_items`` with the ``openai`` judge backend, exactly as the
``alpacaeval`` task calls it; the verdicts of the two runs are compared item by item.

    python bench/judge_throughput.py --n 400 --latency 0.05 --concurrency 16
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path


def _serve(latency: float, port_queue) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real API
        # Headers and body go out as two writes: without TCP_NODELAY the body waits for the
        # client's delayed ACK (about 40 ms), which would slow every request beyond --latency.
        disable_nagle_algorithm = True

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(latency)
            user = body["messages"][-1]["content"]
            seg1 = user.split('"model_1": ')[1].split('"model_2": ')[0]
            seg2 = user.split('"model_2": ')[1].split("## Your task")[0]
            if len(seg1) == len(seg2):
                content = '[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 1}]'
            else:
                w, o = ("model_1", "model_2") if len(seg1) > len(seg2) else ("model_2", "model_1")
                content = f'[{{"model": "{w}", "rank": 1}}, {{"model": "{o}", "rank": 2}}]'
            data = json.dumps({
                "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": 24,
                          "total_tokens": len(user) // 4 + 24},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.request_queue_size = 256
    port_queue.put(srv.server_address[1])
    srv.serve_forever()


def _items(data_dir: Path, n: int) -> tuple[list[tuple[str, str, str, str]], str]:
    a, b = data_dir / "alpaca_eval" / "text_davinci_003.json", data_dir / "alpaca_eval" / "gpt4_1106_preview.json"
    if a.is_file() and b.is_file():
        base, model = json.loads(a.read_text(encoding="utf-8")), json.loads(b.read_text(encoding="utf-8"))
        rows = [(str(k), base[k % len(base)]["instruction"], model[k % len(model)]["output"],
                 base[k % len(base)]["output"]) for k in range(n)]
        return rows, f"AlpacaEval instructions, gpt4_1106_preview vs text_davinci_003 outputs ({a.parent})"
    rows = [(str(k), f"Instruction {k}: explain something.", "An answer. " * (20 + k % 30), "Another. " * (25 + k % 17))
            for k in range(n)]
    return rows, "synthetic texts (no AlpacaEval files found)"


def _run(url: str, items, concurrency: int, lang) -> tuple[list[dict], float]:
    from clo.eval.config import JudgeConfig
    from clo.eval.judge import judge_items, make_judge

    judge = make_judge(JudgeConfig(base_url=url, api_key_env="CLO_BENCH_NO_KEY", max_retries=0,
                                   concurrency=concurrency))
    out: list[dict | None] = [None] * len(items)
    t0 = time.perf_counter()
    for k, v in judge_items(judge, items, lang, seed=0, retries=0, concurrency=concurrency):
        out[k] = v
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=400, help="items judged per run")
    p.add_argument("--latency", type=float, default=0.05, help="server seconds per request")
    p.add_argument("--concurrency", type=int, nargs="+", default=[16])
    p.add_argument("--lang", default="de")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--output", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    os.environ.pop("CLO_BENCH_NO_KEY", None)

    from clo import languages

    lang = languages.get(args.lang)
    items, what = _items(Path(args.data_dir), args.n)
    q = mp.get_context("spawn").Queue()
    server = mp.get_context("spawn").Process(target=_serve, args=(args.latency, q), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{q.get(timeout=60)}/v1"
        _run(url, items[:4], 2, lang)  # warm-up: imports, connection set-up
        seq, seq_s = _run(url, items, 1, lang)
        runs = []
        for c in args.concurrency:
            got, secs = _run(url, items, c, lang)
            same = sum(a == b for a, b in zip(seq, got))
            runs.append({"concurrency": c, "seconds": secs, "items_per_s": len(items) / secs,
                         "ratio": seq_s / secs, "identical_verdicts": same, "failed": sum(v["failed"] for v in got)})
            print(f"concurrency {c}: {secs:.2f}s, {len(items) / secs:.1f} items/s, {seq_s / secs:.1f}x; "
                  f"verdicts identical {same}/{len(items)}", file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.join(timeout=10)
    meta = {"n": len(items), "latency_s": args.latency, "items": what, "lang": args.lang,
            "machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    doc = {"meta": meta, "sequential": {"seconds": seq_s, "items_per_s": len(items) / seq_s,
                                        "failed": sum(v["failed"] for v in seq)}, "concurrent": runs}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "judge_throughput.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = [f"# Judge throughput: {len(items)} items, fake server with {args.latency * 1000:.0f} ms latency", "",
          f"items: {what}; {meta['cpus']} CPUs; `clo.eval.judge.judge_items`, openai backend", "",
          "| concurrency | seconds | items/s | vs sequential | identical verdicts |", "|---|---|---|---|---|",
          f"| 1 (sequential) | {seq_s:.2f} | {len(items) / seq_s:.1f} | 1.0x | - |"]
    md += [f"| {r['concurrency']} | {r['seconds']:.2f} | {r['items_per_s']:.1f} | {r['ratio']:.1f}x | "
           f"{r['identical_verdicts']}/{len(items)} |" for r in runs]
    (out / "judge_throughput.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    ok = all(r["identical_verdicts"] == len(items) for r in runs) and not doc["sequential"]["failed"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
