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

    def to(self, device) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device), self.position_ids.to(device), self.gather_index.to(device),
            self.targets.to(device), self.seq_index.to(device), self.n_seqs, self.n_tokens,
        )

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
    return PackedBatch(
        input_ids, position_ids, torch.cat(gather), torch.cat(targets).long(), torch.cat(seq_index).long(),
        len(seqs), sum(lengths),
    )


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
        cs = ctx.chunk_size
        for s in range(0, h.shape[0], cs):
            hc, tc = h[s : s + cs], targets[s : s + cs]
            z, t = _chunk_logits(hc, weight, bias, ctx.softcap)
            lse = torch.logsumexp(z, dim=-1)
            g = _dlogp_dz(z, lse, tc, t) * grad_out[s : s + cs, None].float()
            if gh is not None:
                gh[s : s + cs] = (g.to(weight.dtype) @ weight).to(h.dtype)
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


def _unwrap(model):
    """The transformers model under a peft wrapper (LoRA layers stay injected and active)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def head_of(model):
    m = _unwrap(model)
    head = m.get_output_embeddings()
    cfg = m.config.get_text_config() if hasattr(m.config, "get_text_config") else m.config
    softcap = getattr(cfg, "final_logit_softcapping", None)
    return head, softcap


def packed_sequence_logps(model, batch: PackedBatch, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed response log-probs ``[n_seqs]`` fp32, response token counts ``[n_seqs]``)."""
    m = _unwrap(model)
    out = m.get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
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

    def __init__(self, model, chunk_size: int = 1024):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, input_ids, position_ids, gather_index, targets, seq_index, n_seqs: int):
        batch = PackedBatch(input_ids, position_ids, gather_index, targets, seq_index, n_seqs, 0)
        return packed_sequence_logps(self.model, batch, self.chunk_size)[0]
