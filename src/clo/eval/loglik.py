"""Log-likelihood of continuations given a shared context, the context computed once.

For a question with context ``c`` and options ``o_1..o_K`` the score of option ``k`` is

.. math::

    \\ell_k = \\sum_{t=1}^{|o_k|} \\log \\pi(o_{k,t} \\mid c, o_{k,<t})

The context runs through the model once per question (a batch of questions, left-padded, with
explicit position ids so that absolute-position models see the same positions as unpadded);
the first token of every option is read off the context's last position. Options longer than one
token continue from the context's key/value cache, repeated once per option, so the context is
never recomputed. Token boundaries follow lm-evaluation-harness: trailing spaces of the context
move to the continuation, the pair is encoded as one string and split at the context's length.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
import torch.nn.functional as F


def tok_encode(tokenizer, text: str) -> list[int]:
    """The tokenizer's default special tokens (as the harness's HFLM), unless ``text`` already
    starts with the BOS string."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, split the way the harness splits them."""
    if not context:
        raise ValueError("empty context: nothing to condition the continuation on")
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tokenizer, context + continuation)
    ctx = tok_encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def _forward(model, **kwargs):
    try:
        return model(**kwargs)
    except TypeError as e:
        # Older heads do not take logits_to_keep; the full logits are then sliced by the caller.
        if "logits_to_keep" not in str(e):
            raise
        kwargs.pop("logits_to_keep")
        return model(**kwargs)


def _cache_kwarg(model) -> str:
    # transformers 5.x renames past_key_values to cache; older releases know only the former.
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.inference_mode()
def score_batch(model, contexts: Sequence[Sequence[int]], options: Sequence[Sequence[Sequence[int]]],
                pad_id: int) -> list[list[float]]:
    """``ℓ[i][k]`` for question ``i``'s option ``k`` (token ids in, summed log-probs out).

    Every question must have the same number of options; every option at least one token.
    """
    if len(contexts) != len(options):
        raise ValueError("contexts and options differ in length")
    n_opt = len(options[0])
    if any(len(o) != n_opt for o in options):
        raise ValueError("every question must have the same number of options")
    if any(len(tok) == 0 for opts in options for tok in opts):
        raise ValueError("an option encodes to no tokens")
    device = next(model.parameters()).device
    B = len(contexts)
    width = max(len(c) for c in contexts)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    for i, c in enumerate(contexts):
        ids[i, width - len(c):] = torch.tensor(list(c))
        mask[i, width - len(c):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    multi = any(len(tok) > 1 for opts in options for tok in opts)
    out = _forward(model, input_ids=ids.to(device), attention_mask=mask.to(device),
                   position_ids=pos.to(device), use_cache=multi, logits_to_keep=1)
    first = F.log_softmax(out.logits[:, -1, :].float(), dim=-1).cpu()
    scores = [[float(first[i, opts[k][0]]) for k in range(n_opt)] for i, opts in enumerate(options)]
    if not multi:
        return scores

    # Continue every option from the context cache: row i*K+k is option k of question i.
    cache = getattr(out, "cache", None) or out.past_key_values
    cache.batch_repeat_interleave(n_opt)
    T = max(len(tok) for opts in options for tok in opts) - 1
    opt_ids = torch.full((B * n_opt, T), pad_id, dtype=torch.long)
    opt_mask = torch.zeros((B * n_opt, T), dtype=torch.long)
    targets = torch.zeros((B * n_opt, T), dtype=torch.long)
    ctx_len = mask.sum(-1)
    for i, opts in enumerate(options):
        for k, tok in enumerate(opts):
            r = i * n_opt + k
            n = len(tok) - 1
            if n:
                opt_ids[r, :n] = torch.tensor(tok[:-1])
                targets[r, :n] = torch.tensor(tok[1:])
                opt_mask[r, :n] = 1
    full_mask = torch.cat([mask.repeat_interleave(n_opt, 0), opt_mask], dim=1)
    opt_pos = ctx_len.repeat_interleave(n_opt).unsqueeze(1) + torch.arange(T).unsqueeze(0)
    out2 = _forward(model, input_ids=opt_ids.to(device), attention_mask=full_mask.to(device),
                    position_ids=opt_pos.to(device), use_cache=False, logits_to_keep=0,
                    **{_cache_kwarg(model): cache})
    logp = F.log_softmax(out2.logits[:, -T:, :].float(), dim=-1).cpu()
    tok_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * opt_mask
    rest = tok_lp.sum(-1)
    for i in range(B):
        for k in range(n_opt):
            scores[i][k] += float(rest[i * n_opt + k])
    return scores


def direct_loglik(model, context: Sequence[int], continuation: Sequence[int]) -> float:
    """Reference: one unpadded forward of context + continuation, summed continuation log-probs."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(context) + list(continuation)], device=device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    logp = F.log_softmax(logits[len(context) - 1:-1], dim=-1)
    return float(logp.gather(-1, torch.tensor(list(continuation), device=device).unsqueeze(-1)).sum())
