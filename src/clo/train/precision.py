"""Which dtype each tensor has while training, and the memory that plan needs.

The model is loaded in ``train.dtype`` (the compute dtype: bf16 on a GPU that has it). With
``train.master_weights: float32`` (the default) the TRAINABLE parameters are held in fp32, and so
are their gradients and AdamW's moments; the frozen ones stay in the compute dtype. Matmuls run in
the compute dtype: under ``torch.autocast`` with one process or DDP, through FSDP2's
``MixedPrecisionPolicy`` (gather in the compute dtype, reduce in fp32) when sharded.

Why: AdamW's update at the paper's learning rates (5e-5 decaying to 1.1e-6) is smaller than half
a bf16 step for most weights, and bf16 weights round it away (measured: 20 steps at 5e-5 changed
54 % of the weights, at 5e-6 8 %).
"""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)


def upcast_trainable(model: torch.nn.Module, master: torch.dtype | None) -> int:
    """Hold the trainable parameters in ``master`` (in place); returns how many were cast."""
    if master is None:
        return 0
    n = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != master:
            p.data = p.data.to(master)
            n += 1
    return n


def compute_context(device: torch.device, compute: torch.dtype, master: torch.dtype | None, sharded: bool):
    """Autocast to the compute dtype where parameters of another dtype take part in matmuls."""
    if sharded or master is None or master == compute:
        return contextlib.nullcontext()
    # No cast cache: each fp32 master is cast where a matmul uses it and freed after, instead of its
    # compute-dtype copy staying until the forward ends (80 MiB per Llama-3-8B layer with attention
    # trained, 2.5 GiB at the forward's end). Every weight is used once per forward, so nothing is cast twice.
    return torch.autocast(device_type=device.type, dtype=compute, cache_enabled=False)


GIB = 2**30


def memory_plan(model: torch.nn.Module, *, world: int, sharded: bool, checkpointing: bool,
                tokens_per_micro_batch: int) -> dict:
    """A planned per-process memory estimate (GiB) before step 1, from the parameters' dtypes.

    Activations are a rule of thumb for decoder-only transformers: with checkpointing about one
    hidden vector per layer per token is kept (plus one layer's full activations, ~34 hidden
    vectors per token), without it ~34 per layer per token (Korthikanti et al. 2022, no
    attention scores with fused kernels).
    """
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    trainable = [p for p in params if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in trainable)
    optim = sum(2 * p.numel() * p.element_size() for p in trainable)  # AdamW's moments: the parameter's dtype
    shard = world if sharded else 1
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    hidden = getattr(cfg, "hidden_size", 0) or 0
    layers = getattr(cfg, "num_hidden_layers", 0) or 0
    act_bytes = 2 if any(p.dtype in (torch.bfloat16, torch.float16) for p in params) else 4
    per_token = hidden * act_bytes * ((layers + 34) if checkpointing else 34 * layers)
    plan = {
        "weights_gib": weights / shard / GIB, "gradients_gib": grads / shard / GIB,
        "optimizer_gib": optim / shard / GIB, "activations_per_1k_tokens_gib": per_token * 1000 / GIB,
        "activations_gib": per_token * tokens_per_micro_batch / GIB,
    }
    plan["total_gib"] = sum(v for k, v in plan.items() if k != "activations_per_1k_tokens_gib")
    return {k: round(v, 3) for k, v in plan.items()}
