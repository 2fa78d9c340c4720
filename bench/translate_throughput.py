"""Translation throughput: Hugging Face ``generate`` against ours (CTranslate2), same model, same inputs.

Random weights with M2M100 shapes and an M2M100Tokenizer (clo.data.testing.tiny_m2m100); the
inputs are random source sentences of ``--src`` tokens and both runtimes are forced to decode
exactly ``--new`` tokens greedily (the anchor of ../shared/bench/mt_decode.py), so the token
counts are identical and the ratio is a pure runtime comparison on the same device. Each runtime
runs as the seq2seq translator runs it with ``dtype: auto``: ``generate`` in bfloat16 on a GPU
and float32 on a CPU (transformers backend), ours in :func:`clo.data.translators.ct2.compute_type`
(float16 on a GPU, int8 on a CPU), the model converted once by
:func:`clo.data.translators.ct2.load_ctranslate2`; ``--compute auto,float32`` adds ours at the
other precision. Batches of ``--batch`` sentences; on a CPU both use ``--threads`` threads.

The projection: the mean segments and source tokens per pair of a real English SFT file
(``--data``, default ../shared/data/sft_en/alpaca_en_demo.json; tokens estimated at ~4
characters each, the target ``--expansion`` times as long) give the time for the paper's 6,400
pairs of one language at each runtime's measured tokens/s.

    python bench/translate_throughput.py --preset tiny                      # CPU, any machine (seconds)
    python bench/translate_throughput.py --preset m2m100-1.2b --batch 128   # GPU

Prints one JSON line per runtime, then the ratio and projection; ``--out FILE`` appends them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

PRESETS = {
    "tiny": {"d_model": 64, "layers": 2, "heads": 4, "ffn": 128, "vocab_size": 1000},
    # M2M100's vocabulary with a small body: the output layer dominates, as in the real models' decode.
    "small": {"d_model": 256, "layers": 3, "heads": 4, "ffn": 1024, "vocab_size": 128112},
    "m2m100-418m": {"d_model": 1024, "layers": 12, "heads": 16, "ffn": 4096, "vocab_size": 128112},
    "m2m100-1.2b": {"d_model": 1024, "layers": 24, "heads": 16, "ffn": 8192, "vocab_size": 128112},
}
PAIRS = 6400  # the paper's training pairs per language


def workload(path: Path | None, expansion: float) -> dict | None:
    """Mean segments, source tokens and target tokens per pair of an Alpaca-style JSON file."""
    from clo.data.segment import approx_tokens, segment_text, segments_of

    if path is None or not path.is_file():
        return None
    rows = json.loads(path.read_text(encoding="utf-8"))
    segs = toks = 0
    for r in rows:
        x = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        for text in (x, r["output"]):
            pieces = segments_of(segment_text(text, 200, approx_tokens))
            segs += len(pieces)
            toks += sum(approx_tokens(p) for p in pieces)
    n = len(rows)
    return {"data": str(path), "pairs": n, "segments_per_pair": round(segs / n, 2),
            "src_tokens_per_pair": round(toks / n, 1), "expansion": expansion,
            "tgt_tokens_per_pair": round(expansion * toks / n, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="tiny")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--n", type=int, default=None, help="sentences (default: one batch)")
    ap.add_argument("--src", type=int, default=120, help="source tokens per sentence")
    ap.add_argument("--new", type=int, default=150, help="generated tokens per sentence")
    ap.add_argument("--device", default=None)
    ap.add_argument("--compute", default="auto", help="ours: comma-separated dtypes (auto = the translator's)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of both runtimes (default: torch's)")
    ap.add_argument("--data", default=None, help="English SFT JSON for the projection")
    ap.add_argument("--expansion", type=float, default=1.2, help="target tokens per source token (projection)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from clo.data.testing import tiny_m2m100
    from clo.data.translators.ct2 import compute_type, load_ctranslate2
    from clo.models import resolve_dtype

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    dtype = resolve_dtype("auto", device)  # what the transformers backend runs
    n = a.n or a.batch
    work = Path(tempfile.mkdtemp(prefix="clo-mt-bench-"))
    # The converted model of a throwaway checkpoint does not belong in the user's cache.
    os.environ.setdefault("CLO_CACHE", str(work / "cache"))
    t0 = time.perf_counter()
    model_dir = tiny_m2m100(work / "model", **PRESETS[a.preset], max_positions=max(256, a.src + a.new + 8),
                            dtype=dtype)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    build_s = time.perf_counter() - t0

    # Random source sentences over the tokenizer's real pieces: "__en__ p1 ... p_src-2 </s>".
    rng = random.Random(0)
    pieces = [t for t, i in sorted(tok.get_vocab().items(), key=lambda x: x[1])
              if i >= 4 and not (t.startswith("__") and t.endswith("__"))]
    sources = [["__en__"] + [rng.choice(pieces) for _ in range(a.src - 2)] + ["</s>"] for _ in range(n)]
    ids = torch.tensor([tok.convert_tokens_to_ids(s) for s in sources], device=device)
    de = tok.lang_token_to_id["__de__"]
    where = torch.cuda.get_device_name() if cuda else f"cpu ({threads} threads)"
    rows = []

    def report(name, seconds, tokens, extra=None):
        r = {"runtime": name, "preset": a.preset, "device": where, "batch": a.batch, "sentences": n,
             "src_tokens": a.src, "new_tokens": a.new, "seconds": round(seconds, 3),
             "gen_tokens_per_s": round(tokens / seconds, 1), **(extra or {})}
        rows.append(r)
        print(json.dumps(r), flush=True)

    # Plain generate, forced to exactly --new tokens after the language token.
    kw = {"max_new_tokens": a.new + 1, "min_new_tokens": a.new + 1, "num_beams": 1, "do_sample": False,
          "forced_bos_token_id": de}
    with torch.inference_mode():
        model.generate(input_ids=ids[: min(2, n), :16], max_new_tokens=4)  # warm-up
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        produced = 0
        for i in range(0, n, a.batch):
            out = model.generate(input_ids=ids[i:i + a.batch], **kw)
            produced += (out.shape[1] - 2) * out.shape[0]  # minus decoder start and language token
        if cuda:
            torch.cuda.synchronize()
        report("generate", time.perf_counter() - t, produced, {"dtype": str(dtype).removeprefix("torch.")})
    del model
    if cuda:
        torch.cuda.empty_cache()

    ct2_kw = {} if cuda else {"intra_threads": threads}
    from clo.data.translators.ct2 import cuda_problem

    problem = cuda_problem() if cuda else None
    if problem:  # e.g. a CUDA 12 build on a CUDA 13 machine: what `backend: auto` falls back from
        print(json.dumps({"skipped": f"ctranslate2 on {device}: {problem}"}), flush=True)
    for want in ([] if problem else a.compute.split(",")):
        t = time.perf_counter()
        ct2 = load_ctranslate2(str(model_dir), device, want, **ct2_kw)
        convert_s = time.perf_counter() - t
        ct2.translate_batch(sources[:2], target_prefix=[["__de__"]] * min(2, n), max_decoding_length=4)  # warm-up
        t = time.perf_counter()
        res = ct2.translate_batch(sources, target_prefix=[["__de__"]] * n, beam_size=1, max_batch_size=a.batch,
                                  min_decoding_length=a.new + 1, max_decoding_length=a.new + 1)
        seconds = time.perf_counter() - t
        produced = sum(len(r.hypotheses[0]) - 1 for r in res)
        report(f"ours (ctranslate2 {compute_type(want, device)})", seconds, produced,
               {"dtype": want, "compute_type": ct2.compute_type, "convert_s": round(convert_s, 1),
                "build_s": round(build_s, 1)})
        del ct2

    gen = rows[0]["gen_tokens_per_s"]
    data = Path(a.data) if a.data else None
    if data is None:
        try:
            from clo.paths import shared_data_dir

            data = shared_data_dir() / "sft_en" / "alpaca_en_demo.json"
        except FileNotFoundError:
            data = None
    w = workload(data, a.expansion)
    summary = {"preset": a.preset, "batch": a.batch, "device": where,
               "ratio_ours_over_generate": {r["runtime"]: round(r["gen_tokens_per_s"] / gen, 2) for r in rows[1:]}}
    if w is not None:
        tokens = PAIRS * w["tgt_tokens_per_pair"]
        summary["workload"] = w
        summary[f"projected_minutes_{PAIRS}_pairs"] = {r["runtime"]: round(tokens / r["gen_tokens_per_s"] / 60, 1)
                                                        for r in rows}
    print(json.dumps(summary), flush=True)
    if a.out:
        with open(a.out, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in [*rows, summary])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
