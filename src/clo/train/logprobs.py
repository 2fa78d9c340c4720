"""Summed response-token log-probs of many sequences in one padding-free forward pass.

Packing: sequences are laid end to end in rows, each with its own position ids restarting at 0,
and no attention mask is passed. transformers then derives the sequence boundaries from the
position ids (``masking_utils.find_packed_sequence_indices``): a block-diagonal causal mask for
eager/sdpa (exact on CPU), varlen kernels for flash attention. Rows are filled first-fit
decreasing up to ``row_capacity`` tokens: one row holding everything suits flash/flex attention
on GPU (cost linear in tokens), while mask-based attention is quadratic in the row length, so on
CPU rows as long as the longest sequence waste little. The tail of a row is filled with a dummy
sequence (its own positions from 0, so nothing attends to it or from it into real tokens).

Head: only the hidden states that predict a response token go through the LM head, in chunks;
:class:`ChunkedTokenLogProbs` computes ``log softmax(h W^T)[target]`` without ever holding more
than ``chunk_size x vocab`` fp32 logits, and in backward recomputes one chunk at a time. When
the head is frozen (attention-only or LoRA training) it computes the gradient wrt ``h`` during the
forward pass instead, which avoids the recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [rows, width]
    position_ids: torch.Tensor  # [rows, width]
    gather_index: torch.Tensor  # [n_response_tokens]: flat index of the hidden state that predicts it
    targets: torch.Tensor  # [n_response_tokens]
    seq_index: torch.Tensor  # [n_response_tokens]: which sequence the token belongs to
    n_seqs: int
    n_tokens: int  # real (non-filler) tokens
    attention_mask: torch.Tensor | None = None  # only the padded layout (:func:`pad_sequences`) has one
    seq_lens: tuple[int, ...] | None = None  # one-row layout: the lengths laid end to end, filler included

    def to(self, device) -> PackedBatch:
        mask = self.attention_mask.to(device) if self.attention_mask is not None else None
        return PackedBatch(
            self.input_ids.to(device), self.position_ids.to(device), self.gather_index.to(device),
            self.targets.to(device), self.seq_index.to(device), self.n_seqs, self.n_tokens, mask, self.seq_lens,
        )

    def varlen_kwargs(self) -> dict:
        """Sequence boundaries for varlen (flash) kernels of a one-row batch: ``cu_seq_lens_*`` and
        ``max_length_*``, so that transformers need not derive them from the position ids (a
        device-to-host read in every layer)."""
        if self.seq_lens is None:
            return {}
        cu = torch.zeros(len(self.seq_lens) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(self.seq_lens, dtype=torch.int32).cumsum(0)
        cu = cu.to(self.input_ids.device)
        m = max(self.seq_lens)
        return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": m, "max_length_k": m}

    def response_counts(self) -> torch.Tensor:
        return torch.bincount(self.seq_index, minlength=self.n_seqs)


def pack_sequences(
    seqs: list[tuple[list[int], list[int]]], row_capacity: int | None = None, pad_id: int = 0
) -> PackedBatch:
    """Pack ``(prompt_ids, response_ids)`` pairs into rows; see the module docstring.

    ``row_capacity=None`` puts everything in one row; otherwise rows hold at most
    ``max(row_capacity, longest sequence)`` tokens.
    """
    if not seqs:
        raise ValueError("pack_sequences: no sequences")
    lengths = [len(p) + len(r) for p, r in seqs]
    for i, (p, r) in enumerate(seqs):
        if not p or not r:
            raise ValueError(f"pack_sequences: sequence {i} has an empty prompt or response")
    cap = sum(lengths) if row_capacity is None else max(row_capacity, max(lengths))
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(seqs)), key=lambda j: -lengths[j]):
        for r, used in enumerate(fill):
            if used + lengths[i] <= cap:
                rows[r].append(i)
                fill[r] += lengths[i]
                break
        else:
            rows.append([i])
            fill.append(lengths[i])
    width = max(fill)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    gather, targets, seq_index = [], [], []
    for r, members in enumerate(rows):
        pos = 0
        for i in sorted(members):  # original order within a row: deterministic layout
            p, resp = seqs[i]
            ids = p + resp
            n = len(ids)
            input_ids[r, pos : pos + n] = torch.tensor(ids)
            position_ids[r, pos : pos + n] = torch.arange(n)
            start = r * width + pos + len(p) - 1  # the hidden state at t predicts token t + 1
            gather.append(torch.arange(start, start + len(resp)))
            targets.append(torch.tensor(resp))
            seq_index.append(torch.full((len(resp),), i))
            pos += n
        if pos < width:
            position_ids[r, pos:] = torch.arange(width - pos)
    seq_lens = None
    if len(rows) == 1:
        seq_lens = tuple(lengths[i] for i in sorted(rows[0])) + ((width - fill[0],) if fill[0] < width else ())
    return PackedBatch(
        input_ids, position_ids, torch.cat(gather), torch.cat(targets).long(), torch.cat(seq_index).long(),
        len(seqs), sum(lengths), None, seq_lens,
    )


def pad_sequences(seqs: list[tuple[list[int], list[int]]], pad_id: int = 0) -> PackedBatch:
    """One right-padded row per sequence with an attention mask: the layout packing must match."""
    width = max(len(p) + len(r) for p, r in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    gather, targets, seq_index = [], [], []
    for i, (p, r) in enumerate(seqs):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        mask[i, :n] = 1
        gather.append(torch.arange(i * width + len(p) - 1, i * width + n - 1))
        targets.append(torch.tensor(r))
        seq_index.append(torch.full((len(r),), i))
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return PackedBatch(ids, position_ids, torch.cat(gather), torch.cat(targets).long(), torch.cat(seq_index).long(),
                       len(seqs), int(mask.sum()), mask, None)


def _chunk_logits(h, weight, bias, softcap):
    z = F.linear(h, weight, bias).float()
    if softcap is None:
        return z, None
    t = torch.tanh(z / softcap)
    return softcap * t, t


class ChunkedTokenLogProbs(torch.autograd.Function):
    """``logp[i] = log_softmax(cap(h[i] W^T + b))[targets[i]]`` chunk by chunk.

    .. math::
        \\frac{\\partial\\, \\mathrm{logp}_i}{\\partial z_i} = (e_{y_i} - p_i) \\odot c'(z_i),
        \\qquad \\frac{\\partial\\, \\mathrm{logp}_i}{\\partial h_i} = W^T \\frac{\\partial\\,
        \\mathrm{logp}_i}{\\partial z_i}

    with ``c`` the optional soft-capping ``cap * tanh(z / cap)`` (Gemma 2/3).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, softcap, chunk_size):
        n = h.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=h.device)
        need_h = ctx.needs_input_grad[0]
        head_grad = ctx.needs_input_grad[1] or (bias is not None and ctx.needs_input_grad[2])
        # Frozen head: the gradient wrt h is known now, up to the per-token scale that backward
        # brings, so compute it while the logits are at hand instead of recomputing them.
        eager_grad = need_h and not head_grad
        grad_h = torch.empty_like(h) if eager_grad else None
        for s in range(0, n, chunk_size):
            hc, tc = h[s : s + chunk_size], targets[s : s + chunk_size]
            with torch.no_grad():
                z, t = _chunk_logits(hc, weight, bias, softcap)
                lse = torch.logsumexp(z, dim=-1)
                out[s : s + chunk_size] = z.gather(1, tc[:, None]).squeeze(1) - lse
                if eager_grad:
                    g = _dlogp_dz(z, lse, tc, t)
                    grad_h[s : s + chunk_size] = (g.to(weight.dtype) @ weight).to(h.dtype)
        ctx.softcap, ctx.chunk_size, ctx.eager = softcap, chunk_size, eager_grad
        if eager_grad:
            ctx.save_for_backward(grad_h)
        else:
            ctx.save_for_backward(h, weight, bias, targets)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.eager:
            (grad_h,) = ctx.saved_tensors
            return grad_h * grad_out[:, None].to(grad_h.dtype), None, None, None, None, None
        h, weight, bias, targets = ctx.saved_tensors
        gh = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        gw = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        gb = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and ctx.needs_input_grad[2] else None
        # Backward runs outside autocast: an fp32 master head meets activations in the compute
        # dtype. Recompute in the activations' dtype, as the forward's autocast did (one cast).
        w = weight.to(h.dtype)
        b = bias.to(h.dtype) if bias is not None else None
        cs = ctx.chunk_size
        for s in range(0, h.shape[0], cs):
            hc, tc = h[s : s + cs], targets[s : s + cs]
            z, t = _chunk_logits(hc, w, b, ctx.softcap)
            lse = torch.logsumexp(z, dim=-1)
            g = _dlogp_dz(z, lse, tc, t) * grad_out[s : s + cs, None].float()
            if gh is not None:
                gh[s : s + cs] = (g.to(w.dtype) @ w).to(h.dtype)
            if gw is not None:
                gw += g.t() @ hc.float()
            if gb is not None:
                gb += g.sum(0)
        return (
            gh,
            gw.to(weight.dtype) if gw is not None else None,
            gb.to(bias.dtype) if gb is not None else None,
            None, None, None,
        )


def _dlogp_dz(z, lse, targets, t):
    g = -torch.exp(z - lse[:, None])
    g.scatter_add_(1, targets[:, None], torch.ones_like(g[:, :1]))
    if t is not None:
        g = g * (1.0 - t * t)
    return g


def token_logps(h, weight, bias=None, targets=None, softcap=None, chunk_size: int = 1024) -> torch.Tensor:
    """Log-prob of ``targets`` under the head ``(weight, bias)`` applied to ``h [n, hidden]``."""
    return ChunkedTokenLogProbs.apply(h, weight, bias, targets, softcap, chunk_size)


def base_model(model):
    """The transformers model under a peft wrapper (LoRA layers stay injected and active)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def head_of(model):
    m = base_model(model)
    head = m.get_output_embeddings()
    cfg = m.config.get_text_config() if hasattr(m.config, "get_text_config") else m.config
    softcap = getattr(cfg, "final_logit_softcapping", None)
    return head, softcap


def packed_sequence_logps(model, batch: PackedBatch, chunk_size: int = 1024,
                          varlen: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed response log-probs ``[n_seqs]`` fp32, response token counts ``[n_seqs]``).

    ``varlen``: pass the one-row layout's boundaries to the attention kernel (flash attention).
    """
    m = base_model(model)
    extra = batch.varlen_kwargs() if varlen else {}
    if batch.attention_mask is not None:
        extra["attention_mask"] = batch.attention_mask
    out = m.get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **extra)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.gather_index)
    head, softcap = head_of(model)
    lp = token_logps(h, head.weight, head.bias, batch.targets, softcap, chunk_size)
    sums = torch.zeros(batch.n_seqs, dtype=torch.float32, device=lp.device).index_add(0, batch.seq_index, lp)
    return sums, batch.response_counts()


def padded_sequence_logps(model, seqs: list[tuple[list[int], list[int]]], pad_id: int = 0) -> torch.Tensor:
    """Reference implementation: right-padded batch with an attention mask, full fp32 logits.

    Used by tests (packed must equal padded) and as a readable statement of the convention.
    """
    width = max(len(p) + len(r) for p, r in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (p, r) in enumerate(seqs):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        mask[i, : len(p) + len(r)] = 1
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    logp = logits.log_softmax(-1)
    sums = []
    for i, (p, r) in enumerate(seqs):
        pos = torch.arange(len(p) - 1, len(p) + len(r) - 1, device=device)
        sums.append(logp[i, pos, torch.tensor(r, device=device)].sum())
    return torch.stack(sums)


class PackedLogProbs(torch.nn.Module):
    """The model as a module whose forward returns packed sequence log-probs.

    Distributed wrappers (DDP, FSDP) hook into ``forward``; routing the computation through
    this module is what lets them see it.
    """

    def __init__(self, model, chunk_size: int = 1024, varlen: bool = False):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.varlen = varlen

    def forward(self, input_ids, position_ids, gather_index, targets, seq_index, n_seqs: int,
                attention_mask=None, seq_lens: tuple[int, ...] | None = None):
        batch = PackedBatch(input_ids, position_ids, gather_index, targets, seq_index, n_seqs, 0,
                            attention_mask, seq_lens)
        return packed_sequence_logps(self.model, batch, self.chunk_size, self.varlen)[0]


def score(module, batch: PackedBatch) -> torch.Tensor:
    """Summed response log-probs of ``batch`` through ``module`` (a :class:`PackedLogProbs` or the
    DDP/FSDP wrapper around one): every forward goes through the distributed wrapper."""
    return module(batch.input_ids, batch.position_ids, batch.gather_index, batch.targets, batch.seq_index,
                  batch.n_seqs, batch.attention_mask, batch.seq_lens)


class PackingError(RuntimeError):
    pass


def packing_layout(model) -> tuple[str, bool]:
    """(layout, varlen) for the model's attention implementation, decided by what it does.

    transformers maps each implementation (kernel-hub names included, once registered) to a mask
    builder. A dense-mask one (eager, sdpa) costs the square of the row length: rows as long as
    the longest sequence (``"rows"``). Any other separates sequences by their boundaries (varlen
    flash kernels, flex block masks): everything in one row (``"one_row"``), with the boundaries
    handed to flash kernels (``varlen``). An implementation with no mask builder at all attends
    across the row; :func:`check_packing` then stops the run instead of training on that.
    """
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    mapping = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    impl = getattr(base_model(model).config, "_attn_implementation", None)
    fn = mapping.get(impl)
    if fn is not None and fn in (mapping.get("eager"), mapping.get("sdpa")):
        return "rows", False
    return "one_row", fn is not None and fn is mapping.get("flash_attention_2")


# Per response token. Measured on CPU with a random 2-layer Llama (bench/packing_check.py):
# rounding of packed against padded up to 2e-4 in bf16 (eager), a kernel attending across the
# row 1.8e-2 even with random weights (trained models attend far more sharply).
PACKING_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}  # half types: 1e-2


def check_packing(score_fn, seqs: list[tuple[list[int], list[int]]], row_capacity: int | None, pad_id: int,
                  dtype: torch.dtype, device) -> float:
    """Stop unless packed log-probs equal padded ones for these sequences; returns the largest
    per-token difference.

    ``score_fn(batch)`` scores a batch the way training does (the same module, kernels, dtype).
    The padded layout (one row per sequence, attention mask) is the convention; a packed batch
    whose sequences attend to each other differs from it by far more than rounding.
    """
    packed = score_fn(pack_sequences(seqs, row_capacity, pad_id).to(device)).float()
    padded = score_fn(pad_sequences(seqs, pad_id).to(device)).float()
    n = torch.tensor([len(r) for _, r in seqs], dtype=torch.float32, device=packed.device)
    diff = float(((packed - padded).detach().abs() / n).max())
    tol = PACKING_TOLERANCE.get(dtype, 1e-2)
    if not diff <= tol:
        raise PackingError(
            f"packed sequences do not score like padded ones with this attention implementation "
            f"(largest difference {diff:.3g} nats per token, tolerance {tol:g}): its kernel attends across "
            f"the sequences of a packed row. Set train.attn_implementation to sdpa, eager, flash_attention_2 "
            f"or flex_attention")
    return diff



def chunk_tokenwise(model, tokens: int | None) -> int:
    """Run the blocks of ``model`` that act on each token alone - gated MLPs (``gate_proj``,
    ``up_proj``, ``down_proj``) and RMSNorms - over at most ``tokens`` tokens at a time; returns how
    many blocks were chunked. ``None`` leaves the model as it is.

    Chunk by chunk, such a block computes the same values. Under gradient each chunk is its own
    non-reentrant checkpoint, so the backward recomputes one chunk's activations at a time instead
    of holding them for the whole micro-batch: the tiled MLP of Arctic Long Sequence Training
    (Bekman et al., 2025), applied to the norms too. At Llama-3-8B shapes with 16,384 tokens per
    micro-batch the MLP's ``[tokens, 14336]`` activations and the fp32 temporaries of an RMSNorm
    are, in the backward of one layer, most of a step's peak above its fixed state. The price is
    one more forward of these blocks per step (their inputs are kept, their activations
    recomputed), about a fifth more compute when only attention is trained.
    """
    if tokens is None:
        return 0
    n = 0
    for module in base_model(model).modules():
        names = {name for name, _ in module.named_children()}
        tokenwise = {"gate_proj", "up_proj", "down_proj"} <= names or (
            type(module).__name__.endswith("RMSNorm") and not names)
        if tokenwise and not getattr(module, "_clo_chunked", False):
            module.forward = _chunked_forward(module.forward, tokens)
            module._clo_chunked = True
            n += 1
    return n


def _chunked_forward(forward, tokens: int):
    from torch.utils.checkpoint import checkpoint

    def chunked(x, *args, **kwargs):
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] <= tokens:
            return forward(x, *args, **kwargs)
        if torch.is_grad_enabled():
            # The checkpoint keeps the RNG state (dropout of LoRA layers inside an MLP recomputes alike).
            outs = [checkpoint(forward, flat[s : s + tokens], *args, use_reentrant=False, **kwargs)
                    for s in range(0, flat.shape[0], tokens)]
        else:
            outs = [forward(flat[s : s + tokens], *args, **kwargs) for s in range(0, flat.shape[0], tokens)]
        out = torch.cat(outs)
        return out.view(*x.shape[:-1], out.shape[-1])

    return chunked
