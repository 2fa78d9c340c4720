"""Memory of a training step, known before launch: the real step run on fake tensors.

:func:`estimate` builds the model from its config alone (no weights: every tensor is a
``FakeTensor`` of ``torch._subclasses.fake_tensor.FakeTensorMode``, shapes and dtypes without
storage), applies the trainer's precision plan (frozen weights in ``train.dtype``, trainable ones
in fp32 masters), selects the trainable parameters as ``train.trainable`` does, and runs the
trainer's step on packed sequences of ``tokens`` tokens - forward through
:func:`clo.train.logprobs.packed_sequence_logps`, the CLO loss, backward, the gradient clip and
AdamW's step, after a first step has created the optimiser state - under
``torch.distributed._tools.mem_tracker.MemTracker`` (the approach of torchtitan's memory
estimation). The peak and its parts (parameters, gradients, optimiser state, activations,
temporaries) are what the allocator would hold on a GPU running the same kernels, without one.

Where the estimate and the GPU differ: the attention kernel. On a machine without CUDA the fake
step would run PyTorch's CPU attention; ``attention="flash"`` (the default) puts a stand-in with
the allocations of flash-attention 2 in its place (:class:`_FlashMemory`; one packed row, as the
trainer packs for ``attn_implementation: flash_attention_2``); ``attention="sdpa"`` keeps the
model's own implementation.

AdamW is fused where the device has the kernel (:func:`adamw`): the default ``foreach``
implementation allocates a temporary as large as all gradients during ``step`` (5.0 GiB at
Llama-3-8B with attention trained).

The step is the trainer's, with its memory settings: ``train.logit_chunk`` (the LM head's chunk)
and ``train.tokenwise_chunk`` (MLPs and RMSNorms run chunk by chunk,
:func:`clo.train.logprobs.chunk_tokenwise`), under the trainer's autocast (no cast cache).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)
GIB = 2**30


def adamw(params, lr: float, weight_decay: float, device: torch.device | str) -> torch.optim.AdamW:
    """AdamW, fused on CUDA (one kernel, no foreach temporary), PyTorch's default elsewhere."""
    fused = torch.device(device).type == "cuda"
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def _tracker_class():
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    class Tracker(MemTracker):
        """MemTracker that leaves frozen parameters without gradient hooks (it would register one on
        every parameter, which fails for a tensor that does not require a gradient)."""

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            out = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
            if install_grad_hooks:
                def grad_hook(grad):
                    self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

                def accumulated_hook(p):
                    self._update_and_maybe_create_winfos(p.grad, _MemRefType.GRAD)

                for p in module.parameters():
                    if p.requires_grad and self._param_to_grad_hook_handles.get(p) is None:
                        self._param_to_grad_hook_handles[p] = (
                            p.register_hook(grad_hook), p.register_post_accumulate_grad_hook(accumulated_hook))
            return out

    return Tracker


@dataclass
class StepMemory:
    peak_gib: float
    parts_gib: dict[str, float]  # at the peak: parameters, gradients, optimizer, activations, ...
    device: str

    def lines(self) -> list[str]:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in self.parts_gib.items() if v >= 0.005)
        return [f"peak {self.peak_gib:.2f} GiB per GPU ({parts})"]


def measure_step(model: torch.nn.Module, seqs: list[tuple[list[int], list[int]]], *, compute_dtype: torch.dtype,
                 master: torch.dtype | None, checkpointing: bool, device: torch.device, logit_chunk: int = 1024,
                 steps: int = 1, tokenwise_chunk: int | None = None) -> StepMemory:
    """Peak memory of the trainer's CLO step on ``seqs`` (4 per example, in the order of
    :data:`clo.train.losses.KEYS`), its parts at the peak; ``model`` has its trainable parameters
    selected. Works on real and on fake tensors."""
    from clo.train.logprobs import chunk_tokenwise, pack_sequences, packed_sequence_logps, packing_layout
    from clo.train.losses import KEYS, clo_loss
    from clo.train.precision import compute_context, upcast_trainable

    upcast_trainable(model, master)
    chunk_tokenwise(model, tokenwise_chunk)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    layout, varlen = packing_layout(model)
    cap = None if layout == "one_row" else max(len(p) + len(r) for p, r in seqs)
    params = [p for p in model.parameters() if p.requires_grad]
    # The optimiser of a GPU run (:func:`adamw`): fused, which CPUs (and fake tensors) have too.
    opt = torch.optim.AdamW(params, lr=5e-5, fused=True)
    # AdamW's moments exist from the first step on: one step on zero gradients creates them, so
    # that the measured step is a steady one (half the time of measuring a second step).
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    tracker = _tracker_class()()
    tracker.track_external(model, opt)
    n = len(seqs) // 4
    batch = _packed(pack_sequences, seqs, cap, device)
    with tracker:
        for i in range(steps):
            with compute_context(device, compute_dtype, master, False):
                sums, counts = packed_sequence_logps(model, batch, logit_chunk, varlen=varlen)
            sums, counts = sums.view(n, 4), counts.view(n, 4)
            nll = -sums[:, 2].sum() / counts[:, 2].sum()
            ref = {k: torch.zeros_like(v) for k, v in zip(KEYS, sums.detach().unbind(1))}
            loss, _ = clo_loss(dict(zip(KEYS, sums.unbind(1))), ref, nll, beta=0.1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i == 0:
                tracker.reset_mod_stats()
    snap = tracker.get_tracker_snapshot("peak")
    dev = next((d for d in snap if str(d) != "cpu" or len(snap) == 1), next(iter(snap)))
    stats = snap[dev]
    parts = {str(k).split(".")[-1].lower(): v / GIB for k, v in stats.items() if str(k) != "Total"}
    return StepMemory(peak_gib=stats["Total"] / GIB, parts_gib=parts, device=str(dev))


def _packed(pack_sequences, seqs, cap, device):
    """The packed batch as real tensors, its response counts precomputed: a count is data-dependent
    (``bincount``), which fake tensors cannot compute."""
    from dataclasses import dataclass, fields

    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from clo.train.logprobs import PackedBatch

    @dataclass
    class Precounted(PackedBatch):
        counts: torch.Tensor | None = None

        def response_counts(self):
            return self.counts

    with unset_fake_temporarily():
        batch = pack_sequences(seqs, cap).to(device)
        counts = batch.response_counts()
    return Precounted(**{f.name: getattr(batch, f.name) for f in fields(batch)}, counts=counts)


def synthetic_sequences(tokens: int, vocab: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """CLO quadruples totalling about ``tokens`` tokens, shaped like the workload of
    ``bench/trl_anchor.py``: 1,558 tokens per example on average, English prompt and answer 56 + 283
    tokens, the target language's 1.3x longer."""
    import random

    rng = random.Random(seed)
    n = max(1, round(tokens / 1558))
    f = tokens / (n * 1558)
    pe, re_ = max(1, round(56 * f)), max(1, round(283 * f))
    pt, rt = max(1, round(pe * 1.3)), max(1, round(re_ * 1.3))
    words = lambda k: [rng.randrange(3, vocab) for _ in range(k)]  # noqa: E731
    seqs = []
    for _ in range(n):
        xe, ye, xt, yt = words(pe), words(re_), words(pt), words(rt)
        seqs += [(xe, ye), (xe, yt), (xt, yt), (xt, ye)]  # clo.train.losses.KEYS: en_en, en_tgt, tgt_tgt, tgt_en
    return seqs


class _FlashMemory(torch.autograd.Function):
    """What a flash-attention-2 kernel allocates, without computing: forward keeps q, k, v (grouped
    keys and values are read in place, not repeated), the output and the fp32 log-sum-exp per
    query; backward allocates dq, dk, dv and, transiently, the fp32 dq accumulator. Used on fake
    tensors only, where no value is read."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        accumulator = torch.empty(q.shape, dtype=torch.float32, device=q.device)
        dq = torch.empty_like(q)
        del accumulator
        return dq, torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def _flash_standin(model):
    from transformers import AttentionInterface

    def flash_like(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        return _FlashMemory.apply(query, key, value).transpose(1, 2), None

    AttentionInterface.register("clo_flash_estimate", flash_like)
    old = model.config._attn_implementation
    model.config._attn_implementation = "clo_flash_estimate"
    try:
        yield
    finally:
        model.config._attn_implementation = old


def estimate(config, *, trainable: str = "attention", dtype: torch.dtype = torch.bfloat16,
             master: torch.dtype | None = torch.float32, tokens: int = 16384, checkpointing: bool = True,
             attention: str = "flash", seqs=None, logit_chunk: int = 1024,
             tokenwise_chunk: int | None = None) -> StepMemory:
    """Peak memory per GPU of one training step of a model of ``config`` (a transformers config),
    without its weights: see the module docstring."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoModelForCausalLM

    from clo.models import select_trainable

    vocab = config.get_text_config().vocab_size if hasattr(config, "get_text_config") else config.vocab_size
    seqs = seqs or synthetic_sequences(tokens, vocab)
    device = torch.device("cpu")
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        select_trainable(model, trainable)
        ctx = _flash_standin(model) if attention == "flash" else contextlib.nullcontext()
        with ctx:
            return measure_step(model, seqs, compute_dtype=dtype, master=master, checkpointing=checkpointing,
                                device=device, logit_chunk=logit_chunk, tokenwise_chunk=tokenwise_chunk)


def estimate_for_config(cfg, *, gpus: int = 1, tokens: int | None = None, gpu_memory_gib: float | None = None,
                        model_config=None) -> dict:
    """``clo train --estimate-memory``: the peak per GPU of the run ``cfg`` describes, from the
    model's config alone. FSDP2 over ``gpus`` divides parameters, gradients and optimiser state by
    ``gpus`` (sharded evenly); activations stay per GPU.

    ``gpu_memory_gib``: also the largest ``max_tokens_per_micro_batch`` (a multiple of 512) whose
    step fits, from two estimates (memory grows linearly with the tokens of a micro-batch: the
    activations) and checked by a third at the answer."""
    if gpu_memory_gib is not None:
        return _fit(cfg, gpus, gpu_memory_gib)
    from transformers import AutoConfig

    from clo.models import resolve

    tc = cfg.train
    if tc.trainable == "lora":
        from clo.errors import CloError

        raise CloError("--estimate-memory: train.trainable=lora is not estimated (its state is small: the "
                         "frozen weights and activations dominate)")
    config = model_config or AutoConfig.from_pretrained(resolve(cfg.model))
    dtype = torch.bfloat16 if tc.dtype == "auto" else getattr(torch, tc.dtype)
    master = None if tc.master_weights == "none" else torch.float32
    checkpointing = True if tc.gradient_checkpointing == "auto" else bool(tc.gradient_checkpointing)
    tokens = tokens or tc.max_tokens_per_micro_batch or 16384
    step = estimate(config, trainable=tc.trainable, dtype=dtype, master=master, tokens=tokens,
                    checkpointing=checkpointing, logit_chunk=tc.logit_chunk, tokenwise_chunk=tc.tokenwise_chunk)
    parts = dict(step.parts_gib)
    sharded = gpus > 1 and tc.sharding != "none"
    if sharded:
        for k in ("param", "grad", "opt"):
            parts[k] = parts.get(k, 0.0) / gpus
    return {"model": cfg.model, "gpus": gpus, "sharded": sharded, "tokens_per_micro_batch": tokens,
            "dtype": str(dtype).removeprefix("torch."), "master_weights": tc.master_weights,
            "gradient_checkpointing": checkpointing, "trainable": tc.trainable, "logit_chunk": tc.logit_chunk,
            "tokenwise_chunk": tc.tokenwise_chunk,
            "peak_gib_per_gpu": round(sum(parts.values()), 2), "parts_gib": {k: round(v, 2) for k, v in parts.items()}}


def _fit(cfg, gpus: int, gpu_memory_gib: float) -> dict:
    lo, hi = 2048, 8192
    a, b = (estimate_for_config(cfg, gpus=gpus, tokens=t) for t in (lo, hi))
    slope = (b["peak_gib_per_gpu"] - a["peak_gib_per_gpu"]) / (hi - lo)
    static = a["peak_gib_per_gpu"] - slope * lo
    if slope <= 0 or static >= gpu_memory_gib:
        return {**a, "gpu_memory_gib": gpu_memory_gib, "fits": False,
                "note": f"the step needs {static:.1f} GiB before any activation: more GPUs (FSDP2) or fewer trained "
                        f"parameters"}
    tokens = int((gpu_memory_gib - static) / slope) // 512 * 512
    while tokens >= 512:
        got = estimate_for_config(cfg, gpus=gpus, tokens=tokens)
        if got["peak_gib_per_gpu"] <= gpu_memory_gib:
            return {**got, "gpu_memory_gib": gpu_memory_gib, "fits": True,
                    "suggested": {"train.max_tokens_per_micro_batch": tokens, "train.micro_batch_size": None}}
        tokens = int(tokens * 0.9) // 512 * 512
    return {**a, "gpu_memory_gib": gpu_memory_gib, "fits": False, "note": "not even 512 tokens fit"}


def local_model_config(spec: str):
    """The transformers config of ``spec`` if it is on this machine - a model directory, an offline
    model already converted, a hub id in the Hugging Face cache - without downloading or converting
    anything; else ``None``."""
    from pathlib import Path

    from transformers import AutoConfig

    from clo.models import OFFLINE_MODELS, cache_root

    if spec in OFFLINE_MODELS:  # converted on first load, which planning must not do
        path = cache_root() / "models" / spec
        source = path if (path / ".complete").exists() else None
    else:
        path = Path(spec).expanduser()
        source = (path if (path / "config.json").is_file() else None) if path.is_dir() else spec
    if source is None:
        return None
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):  # not there, or a config transformers cannot read (no model_type)
        return None


def plan_lines(runs) -> list[str]:
    """``clo run --dry-run``: the estimated peak per GPU (one GPU) of the grid's training runs, one
    line per distinct model and memory setting, where the model's config is on this machine."""
    from clo.errors import CloError

    keys = ("trainable", "dtype", "master_weights", "gradient_checkpointing", "max_tokens_per_micro_batch",
            "logit_chunk", "tokenwise_chunk")
    groups: dict[tuple, list] = {}
    for r in runs:
        if r.method is not None:
            groups.setdefault((r.model_spec, *(getattr(r.config.train, k) for k in keys)), []).append(r)
    lines, configs = [], {}
    for key, members in groups.items():
        spec, cfg = key[0], members[0].config
        settings = f"{members[0].model} {cfg.train.trainable}, tokenwise_chunk={cfg.train.tokenwise_chunk or 'null'}"
        if spec not in configs:
            configs[spec] = local_model_config(spec)
        if configs[spec] is None:
            lines.append(f"  {settings}: not estimated, its config is not on this machine "
                         f"(`clo train --estimate-memory --set model={spec}` fetches it)")
            continue
        try:
            est = estimate_for_config(cfg, model_config=configs[spec])
        except CloError as e:
            lines.append(f"  {settings}: not estimated ({e})")
            continue
        parts = ", ".join(f"{k} {v:.2f}" for k, v in est["parts_gib"].items() if v >= 0.005)
        lines.append(f"  {settings}, {est['tokens_per_micro_batch']} tokens per micro-batch: peak "
                     f"{est['peak_gib_per_gpu']:.2f} GiB per GPU ({parts}); {len(members)} run(s)")
    return (["training memory, one GPU (clo train --estimate-memory):"] + lines) if lines else []
