"""Throughput of our CLO step against TRL's CLO emulation on the same shapes and data.

The workload is the one of ``bench/trl_anchor.py`` (imported from ``--anchor``): a random-weight Llama of the chosen shapes, a word-level tokenizer (exact token counts),
pairs drawn like OASST first turns, attention projections trained. Both sides run in their own
subprocess so that peak memory (CUDA max allocated, or the process's max RSS on CPU) is theirs.

- ``ours``: clo's CLO step: the 4 sequences of each example packed padding-free in one forward,
  chunked LM head over response tokens, reference log-probs precomputed in one no-grad pass
  (its time is COUNTED: spread over the steps it serves, see ``ref_s_per_step``). ``--cl-loss``
  picks the preference term (``train.cl_loss``); the reference-free ``orpo`` and ``simpo`` skip
  the reference pass, as the trainer does.
- ``trl-clo`` / ``trl-sft``: run by the anchor script itself.

Prints one JSON line per side and a summary with the ratios; ``--out`` writes JSON + Markdown.

    python bench/train_throughput.py --config tiny --scale 0.5          # CPU (shorter sequences)
    python bench/train_throughput.py --config tiny --modes ours --cl-loss simpo --threads 1
    python bench/train_throughput.py --config llama3-8b --grad-ckpt     # GPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CL_LOSSES = ("sigmoid", "ipo", "hinge", "robust", "orpo", "simpo")  # clo.train.losses.CL_LOSSES (no import here)
DEFAULT_ANCHOR = REPO / "bench" / "trl_anchor.py"


def _load_anchor(path: Path):
    if not path.is_file():
        sys.exit(f"anchor script {path} not found (pass --anchor PATH to trl_anchor.py)")
    spec = importlib.util.spec_from_file_location("trl_anchor", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _peak_gib(cuda: bool) -> float:
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_ours(a) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(REPO / "src"))
    from clo.train.logprobs import pack_sequences, packed_sequence_logps, packing_layout
    from clo.train.losses import KEYS, REFERENCE_FREE, clo_loss
    from clo.train.memory import adamw
    from clo.train.precision import compute_context, upcast_trainable

    anchor = _load_anchor(Path(a.anchor))
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = LlamaConfig(**anchor.CONFIGS[a.config], max_position_embeddings=4096)
    tok = anchor.make_tokenizer(cfg.vocab_size)
    cfg.pad_token_id, cfg.eos_token_id = tok.pad_token_id, tok.eos_token_id
    if a.attn:
        cfg._attn_implementation = a.attn
    n_pairs = a.pairs_per_step * (a.steps + a.warmup)
    pairs = anchor.make_pairs(n_pairs, cfg.vocab_size, 0, a.scale)

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    # Same token sequences as TRL builds: prompt, then completion + EOS.
    quads = []
    for p in pairs:
        xe, xl = ids(p["x_en"]), ids(p["x_l"])
        ye, yl = ids(p["y_en"]) + [tok.eos_token_id], ids(p["y_l"]) + [tok.eos_token_id]
        quads.append({"en_en": (xe, ye), "en_tgt": (xe, yl), "tgt_tgt": (xl, yl), "tgt_en": (xl, ye)})
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    for name, prm in model.named_parameters():
        prm.requires_grad = any(k in name for k in ("q_proj", "k_proj", "v_proj", "o_proj"))
    # The trainer's precision: trainable tensors (and AdamW's state) in fp32, matmuls in `dtype`.
    master = torch.float32 if a.master_weights == "float32" else None
    upcast_trainable(model, master)
    if a.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layout, varlen = packing_layout(model)

    def pack(seqs):
        cap = None if layout == "one_row" else max(len(x) + len(y) for x, y in seqs)
        return pack_sequences(seqs, cap, tok.pad_token_id).to(device)

    def logps(batch):
        with compute_context(torch.device(device), dtype, master, sharded=False):
            return packed_sequence_logps(model, batch, varlen=varlen)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # Reference pass: every sequence once, no grad, the starting model. One untimed forward
    # first: TRL's timed steps come after warm-up steps too. Reference-free losses have none.
    ref, ref_s = None, 0.0
    if a.cl_loss not in REFERENCE_FREE:
        model.eval()
        with torch.no_grad():
            logps(pack([quads[0][k] for k in KEYS]))
        sync()
        t0 = time.perf_counter()
        ref = torch.empty(len(quads), 4)
        with torch.no_grad():
            for s in range(0, len(quads), a.ref_batch):
                chunk = quads[s : s + a.ref_batch]
                sums, _ = logps(pack([q[k] for q in chunk for k in KEYS]))
                ref[s : s + len(chunk)] = sums.view(len(chunk), 4).float().cpu()
        sync()
        ref_s = time.perf_counter() - t0
    model.train()
    opt = adamw([p for p in model.parameters() if p.requires_grad], 5e-5, 0.0, device)  # the trainer's: fused on CUDA
    times, tokens = [], []
    for step in range(a.steps + a.warmup):
        batch = quads[step * a.pairs_per_step : (step + 1) * a.pairs_per_step]
        seqs = [q[k] for q in batch for k in KEYS]
        sync()
        t0 = time.perf_counter()
        sums, counts = logps(pack(seqs))
        sums, counts = sums.view(len(batch), 4), counts.view(len(batch), 4)
        r = None if ref is None else ref[step * a.pairs_per_step : (step + 1) * a.pairs_per_step].to(device)
        nll = -sums[:, 2].sum() / counts[:, 2].sum()
        loss, _ = clo_loss(dict(zip(KEYS, sums.unbind(1))), None if r is None else dict(zip(KEYS, r.unbind(1))), nll,
                           beta=a.beta, cl_loss=a.cl_loss, counts=dict(zip(KEYS, counts.unbind(1))),
                           label_smoothing=0.1 if a.cl_loss == "robust" else 0.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t0)
        tokens.append(sum(len(x) + len(y) for x, y in seqs))
    steady = times[a.warmup :]
    med = statistics.median(steady)
    ref_per_step = ref_s / len(quads) * a.pairs_per_step
    return {
        "mode": "ours-clo" if a.cl_loss == "sigmoid" else f"ours-clo-{a.cl_loss}", "cl_loss": a.cl_loss,
        "step_s_median": round(med, 4), "ref_pass_s": round(ref_s, 3),
        "ref_s_per_step": round(ref_per_step, 4),
        "pairs_per_s": round(a.pairs_per_step / (med + ref_per_step), 3),
        "pairs_per_s_without_ref": round(a.pairs_per_step / med, 3),
        "tokens_per_s": round(statistics.mean(tokens[a.warmup :]) / (med + ref_per_step), 1),
        "peak_mem_gib": round(_peak_gib(cuda), 3), "peak_kind": "cuda allocated" if cuda else "process max RSS",
    }


def run_trl(a, mode) -> dict:
    """The anchor script in a subprocess (its own process: its own peak memory)."""
    cmd = [sys.executable, str(a.anchor), "--config", a.config, "--modes", mode, "--pairs-per-step",
           str(a.pairs_per_step), "--steps", str(a.steps), "--warmup", str(a.warmup), "--scale", str(a.scale)]
    if a.grad_ckpt:
        cmd.append("--grad-ckpt")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, check=False)
    if proc.returncode != 0:
        sys.exit(f"anchor failed ({mode}):\n{proc.stderr[-3000:]}")
    lines = []
    for ln in proc.stdout.splitlines():
        try:  # the trainer also prints Python dict reprs; only the anchor's JSON lines count
            lines.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    info = next(x for x in lines if "trl" in x)
    res = next(x for x in lines if x.get("mode") == mode)
    if res.get("peak_mem_gib") is None:
        res["peak_mem_gib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 3)
        res["peak_kind"] = "process max RSS (largest child so far)"
    tokens_per_pair = info["mean_tokens_per_pair_4seq"]
    res["tokens_per_s"] = round(res["pairs_per_s"] * tokens_per_pair, 1)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--anchor", default=str(DEFAULT_ANCHOR), help="path to trl_anchor.py")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--pairs-per-step", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="length scale of the workload (1.0: the published anchor's, 1,558 tokens per example)")
    ap.add_argument("--ref-batch", type=int, default=8, help="examples per reference-pass batch")
    ap.add_argument("--grad-ckpt", action="store_true")
    ap.add_argument("--master-weights", choices=["float32", "none"], default="float32",
                    help="as train.master_weights: fp32 trainable tensors (default) or all in the compute dtype")
    ap.add_argument("--attn", default=None, help="attention implementation for ours (e.g. flash_attention_2)")
    ap.add_argument("--cl-loss", default="sigmoid", choices=CL_LOSSES,
                    help="ours: train.cl_loss (orpo, simpo: no reference pass; robust: label smoothing 0.1)")
    ap.add_argument("--beta", type=float, default=None, help="ours: train.beta (default 0.1; 2.0 for simpo)")
    ap.add_argument("--modes", default="ours,trl-clo,trl-sft")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS for both sides (on a shared CPU, 1 avoids OpenMP spin-waits)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help="write results as JSON and Markdown (OUT.json, OUT.md)")
    a = ap.parse_args()
    if a.beta is None:
        a.beta = 2.0 if a.cl_loss == "simpo" else 0.1  # SimPO's paper range; the rest: the CLO paper's
    if a.threads is not None and os.environ.get("OMP_NUM_THREADS") != str(a.threads):
        # Set before torch starts in the subprocesses (both sides inherit the environment).
        os.environ["OMP_NUM_THREADS"] = str(a.threads)
    if a.worker:
        print(json.dumps(run_ours(a)), flush=True)
        return 0
    results = {}
    for mode in a.modes.split(","):
        if mode == "ours":
            cmd = [sys.executable, __file__, "--worker", *sys.argv[1:]]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, check=False)
            if proc.returncode != 0:
                sys.exit(f"ours failed:\n{proc.stderr[-3000:]}")
            results["ours-clo"] = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            results[mode] = run_trl(a, mode)
        print(json.dumps(results[list(results)[-1]]), flush=True)
    summary = {}
    if "ours-clo" in results and "trl-clo" in results:
        o, t = results["ours-clo"], results["trl-clo"]
        summary["examples_per_s_ratio_vs_trl_clo"] = round(o["pairs_per_s"] / t["pairs_per_s"], 2)
        summary["tokens_per_s_ratio_vs_trl_clo"] = round(o["tokens_per_s"] / t["tokens_per_s"], 2)
        summary["peak_mem_ratio_vs_trl_clo"] = round(o["peak_mem_gib"] / t["peak_mem_gib"], 2)
    if "ours-clo" in results and "trl-sft" in results:
        summary["peak_mem_ratio_vs_trl_sft"] = round(
            results["ours-clo"]["peak_mem_gib"] / results["trl-sft"]["peak_mem_gib"], 2)
    print(json.dumps({"summary": summary}), flush=True)
    if a.out:
        import torch

        meta = {"threads": os.environ.get("OMP_NUM_THREADS"), "config": a.config, "scale": a.scale, "pairs_per_step": a.pairs_per_step, "steps": a.steps,
                    "warmup": a.warmup, "grad_ckpt": a.grad_ckpt, "master_weights": a.master_weights, "torch": torch.__version__,
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
        Path(a.out + ".json").write_text(json.dumps({"meta": meta, "results": results, "summary": summary}, indent=1))
        rows = ["| mode | examples/s | tokens/s | step s (median) | peak GiB |", "|---|---|---|---|---|"]
        for name, r in results.items():
            rows.append(f"| {r.get('mode', name)} | {r['pairs_per_s']} | {r.get('tokens_per_s')} | {r['step_s_median']} | "
                        f"{r['peak_mem_gib']} |")
        md = [f"# CLO training throughput ({meta['device']}, config {a.config}, scale {a.scale})", "", *rows, ""]
        md += [f"- {k}: {v}" for k, v in summary.items()]
        Path(a.out + ".md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
