"""Translation throughput: Hugging Face ``generate`` against ours (CTranslate2), same model, same inputs.

Random weights with M2M100 shapes and a real M2M100 tokenizer (clo.data.testing.tiny_m2m100);
the inputs are random source sentences of ``--src`` tokens and both runtimes are forced to
decode exactly ``--new`` tokens greedily (the anchor of ../shared/bench/mt_decode.py), so the
token counts are identical and the ratio is a pure runtime comparison. Ours is what
``data.translator.kind=seq2seq`` runs when ctranslate2 is installed: the model converted once by
:func:`clo.data.translate.load_ctranslate2`, batches of ``--batch`` sentences.

    python bench/translate_throughput.py --preset tiny                  # CPU, any machine (seconds)
    python bench/translate_throughput.py --preset m2m100-1.2b --batch 128   # GPU

Prints one JSON line per runtime and the ratio; ``--out FILE`` appends them as JSON lines.
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
    "m2m100-1.2b": {"d_model": 1024, "layers": 24, "heads": 16, "ffn": 8192, "vocab_size": 128112},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="tiny")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--n", type=int, default=None, help="sentences (default: one batch)")
    ap.add_argument("--src", type=int, default=120, help="source tokens per sentence")
    ap.add_argument("--new", type=int, default=150, help="generated tokens per sentence")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out")
    a = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from clo.data.testing import tiny_m2m100
    from clo.data.translate import load_ctranslate2

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    n = a.n or a.batch
    work = Path(tempfile.mkdtemp(prefix="clo-mt-bench-"))
    # The converted model of a throwaway checkpoint does not belong in the user's cache.
    os.environ.setdefault("CLO_CACHE", str(work / "cache"))
    t0 = time.perf_counter()
    model_dir = tiny_m2m100(work / "model", **PRESETS[a.preset], max_positions=max(256, a.src + a.new + 8), dtype=dtype)
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
    rows = []

    def report(name, seconds, tokens, extra=None):
        r = {"runtime": name, "preset": a.preset, "device": torch.cuda.get_device_name() if device.startswith("cuda")
             else "cpu", "batch": a.batch, "sentences": n, "src_tokens": a.src, "new_tokens": a.new,
             "seconds": round(seconds, 3), "gen_tokens_per_s": round(tokens / seconds, 1), **(extra or {})}
        rows.append(r)
        print(json.dumps(r), flush=True)

    # Plain generate, forced to exactly --new tokens after the language token.
    kw = {"max_new_tokens": a.new + 1, "min_new_tokens": a.new + 1, "num_beams": 1, "do_sample": False, "forced_bos_token_id": de}
    with torch.inference_mode():
        model.generate(input_ids=ids[: min(2, n), :16], max_new_tokens=4)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        produced = 0
        for i in range(0, n, a.batch):
            out = model.generate(input_ids=ids[i:i + a.batch], **kw)
            produced += (out.shape[1] - 2) * out.shape[0]  # minus decoder start and language token
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        report("generate", time.perf_counter() - t, produced)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    t = time.perf_counter()
    ct2 = load_ctranslate2(str(model_dir), device, "bfloat16" if dtype == torch.bfloat16 else "float32")
    convert_s = time.perf_counter() - t
    ct2.translate_batch(sources[:2], target_prefix=[["__de__"]] * min(2, n), max_decoding_length=4)  # warm-up
    t = time.perf_counter()
    res = ct2.translate_batch(sources, target_prefix=[["__de__"]] * n, beam_size=1, max_batch_size=a.batch,
                              min_decoding_length=a.new + 1, max_decoding_length=a.new + 1)
    seconds = time.perf_counter() - t
    produced = sum(len(r.hypotheses[0]) - 1 for r in res)
    report("ours (ctranslate2)", seconds, produced, {"convert_s": round(convert_s, 1), "build_s": round(build_s, 1)})
    ratio = rows[1]["gen_tokens_per_s"] / rows[0]["gen_tokens_per_s"]
    print(json.dumps({"ratio_ours_over_generate": round(ratio, 2), "preset": a.preset, "batch": a.batch,
                      "device": rows[0]["device"]}), flush=True)
    if a.out:
        with open(a.out, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows + [{"ratio_ours_over_generate": round(ratio, 2)}])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
