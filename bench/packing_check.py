"""Packed log-probs against padded ones, per attention implementation, at real hidden sizes.

Random weights with Llama-3-8B layer shapes (``--layers`` of them), the workload's lengths,
``train.dtype``'s compute dtype: for each implementation that is installed, the largest
per-token difference between clo's packed layout (rows for dense-mask kernels, one row with
varlen boundaries for flash) and one padded row per sequence, next to the difference a kernel
that attends across packed sequences would make (the margin ``check_packing`` relies on).

    python bench/packing_check.py --out packing.json          # GPU: sdpa, flash_attention_2 if installed
    python bench/packing_check.py --preset tiny --dtype float32   # CPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PRESETS = {
    "llama3-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "vocab_size": 128256},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
             "vocab_size": 1000},
}


def main() -> int:
    from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from clo.train.logprobs import PackedLogProbs, pack_sequences, packing_layout, pad_sequences, score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="llama3-8b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--out")
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, a.dtype)
    AttentionInterface.register("leaky_sdpa", sdpa_attention_forward)  # no mask builder: attends across
    impls = ["sdpa", "eager", "leaky_sdpa"]
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        impls.insert(1, "flash_attention_2")
    rng = random.Random(0)
    cfg = LlamaConfig(**PRESETS[a.preset], num_hidden_layers=a.layers, max_position_embeddings=8192)
    seqs = [([rng.randrange(10, cfg.vocab_size) for _ in range(rng.randint(20, 200))],
             [rng.randrange(10, cfg.vocab_size) for _ in range(rng.randint(20, 300))]) for _ in range(a.seqs)]
    n = torch.tensor([len(r) for _, r in seqs], dtype=torch.float32, device=device)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": a.dtype,
               "preset": a.preset, "layers": a.layers, "sequences": len(seqs), "implementations": {}}
    with torch.no_grad():
        model.config._attn_implementation = "sdpa"
        w = PackedLogProbs(model)
        padded = score(w, pad_sequences(seqs).to(device)).float()
        for impl in impls:
            model.config._attn_implementation = impl
            layout, varlen = packing_layout(model)
            w = PackedLogProbs(model, varlen=varlen)
            cap = None if layout == "one_row" else max(len(p) + len(r) for p, r in seqs)
            packed = score(w, pack_sequences(seqs, cap).to(device)).float()
            diff = ((packed - padded).abs() / n)
            results["implementations"][impl] = {"layout": layout, "varlen": varlen,
                                                "max_diff_per_token": float(diff.max()),
                                                "mean_diff_per_token": float(diff.mean())}
            print(json.dumps({impl: results["implementations"][impl]}), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
