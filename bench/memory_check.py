"""The memory estimate beside what the GPU allocates: one CLO training step at the given shapes.

``clo.train.memory.estimate`` runs the step on fake tensors (no GPU, no weights); on a GPU the same
step then runs on a random-weight model and ``torch.cuda.max_memory_allocated`` is read. On a CPU
(``--preset tiny``) the real step's MemTracker peak stands in for the allocator. Prints one JSON
line; ``--out FILE`` writes it.

    python bench/memory_check.py --preset tiny --tokens 2048                 # CPU
    python bench/memory_check.py --preset llama3-8b --tokens 16384           # GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PRESETS = {
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="tiny")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from clo.models import select_trainable
    from clo.train import memory

    cuda = torch.cuda.is_available()
    cfg = LlamaConfig(**PRESETS[a.preset], max_position_embeddings=max(4096, a.tokens))
    cfg._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if cuda else torch.float32
    master = torch.float32 if cuda else None
    seqs = memory.synthetic_sequences(a.tokens, cfg.vocab_size)
    t0 = time.perf_counter()
    # On a GPU the estimate models flash attention (one packed row); on a CPU the real step runs
    # sdpa, and so does the estimate, so that the two are the same computation.
    est = memory.estimate(cfg, dtype=dtype, master=master, tokens=a.tokens, checkpointing=cuda,
                          attention="flash" if cuda else "sdpa", seqs=seqs)
    row = {"preset": a.preset, "tokens": sum(len(p) + len(r) for p, r in seqs), "dtype": str(dtype)[6:],
           "estimate_gib": round(est.peak_gib, 3), "estimate_parts_gib": {k: round(v, 3) for k, v in est.parts_gib.items()},
           "estimate_s": round(time.perf_counter() - t0, 1)}
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    if cuda:
        import importlib.util

        attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
        cfg._attn_implementation = attn
        row["attention"] = attn
    with device:
        model = LlamaForCausalLM(cfg).to(dtype)
    select_trainable(model, "attention")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    real = memory.measure_step(model, seqs, compute_dtype=dtype, master=master, checkpointing=cuda, device=device)
    row["memtracker_real_gib"] = round(real.peak_gib, 3)
    if cuda:
        row["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        row["allocated_before_step_gib"] = round(base / 2**30, 3)
        row["device"] = torch.cuda.get_device_name()
    measured = row.get("max_memory_allocated_gib", row["memtracker_real_gib"])
    row["estimate_over_measured"] = round(est.peak_gib / measured, 3)
    print(json.dumps(row), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
