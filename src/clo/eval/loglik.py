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
from collections.abc import Sequence

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


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all ``seqs``."""
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


def has_sliding_window(model) -> bool:
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return bool(getattr(cfg, "sliding_window", None)) and (
        "sliding_attention" in (getattr(cfg, "layer_types", None) or ["sliding_attention"]))


@torch.inference_mode()
def score_shared(model, groups: Sequence[Sequence[Sequence[int]]], options: Sequence[Sequence[Sequence[int]]],
                 pad_id: int) -> list[list[float]]:
    """:func:`score_batch` for questions that share a context prefix (BELEBELE: the passage).

    ``groups`` lists, per group, the indices into ``options`` of its questions; the contexts are
    given through ``options`` alongside as ``(context, options)`` pairs, i.e. ``options[i] =
    (context_ids, [option_ids, ...])``. The longest token prefix common to a group (at most all but
    the last context token) runs once; each question's rest of the context continues from that
    cache, then its options as in :func:`score_batch`. Scores equal an unshared computation up to
    float rounding; use it only on models without sliding-window attention (the padded gap
    between prefix and suffix would count toward the window).
    """
    device = next(model.parameters()).device
    items = list(options)
    n_opt = len(items[0][1])
    if any(len(opts) != n_opt for _, opts in items):
        raise ValueError("every question must have the same number of options")
    if any(len(tok) == 0 for _, opts in items for tok in opts):
        raise ValueError("an option encodes to no tokens")
    prefixes, owner, suffixes = [], [], []
    order = [i for g in groups for i in g]
    cut = []
    for g in groups:
        ctxs = [items[i][0] for i in g]
        cut.append(min(common_prefix_len(ctxs), min(len(c) for c in ctxs) - 1))
    # The suffix pass is padded to its longest suffix: a lone question, which shares nothing,
    # splits where its suffix fills that width instead of leaving it padding.
    width = max([max(len(items[i][0]) for i in g) - n for g, n in zip(groups, cut) if len(g) > 1] or [1])
    for g_idx, g in enumerate(groups):
        ctxs = [items[i][0] for i in g]
        n = cut[g_idx] if len(g) > 1 else max(1, len(ctxs[0]) - width)
        if n < 1:
            raise ValueError("a context of fewer than 2 tokens cannot be split into prefix and suffix")
        prefixes.append(ctxs[0][:n])
        for i in g:
            owner.append(g_idx)
            suffixes.append(items[i][0][n:])
    G, B = len(prefixes), len(order)
    # 1. the shared prefixes, left-padded
    wp = max(len(p) for p in prefixes)
    p_ids = torch.full((G, wp), pad_id, dtype=torch.long)
    p_mask = torch.zeros((G, wp), dtype=torch.long)
    for g, p in enumerate(prefixes):
        p_ids[g, wp - len(p):] = torch.tensor(p)
        p_mask[g, wp - len(p):] = 1
    p_pos = (p_mask.cumsum(-1) - 1).clamp(min=0)
    out = _forward(model, input_ids=p_ids.to(device), attention_mask=p_mask.to(device),
                   position_ids=p_pos.to(device), use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None) or out.past_key_values
    own = torch.tensor(owner)
    cache.batch_select_indices(own.to(device))
    # 2. each question's rest of the context, right-padded after its prefix
    ws = max(len(s) for s in suffixes)
    s_ids = torch.full((B, ws), pad_id, dtype=torch.long)
    s_mask = torch.zeros((B, ws), dtype=torch.long)
    for r, s in enumerate(suffixes):
        s_ids[r, :len(s)] = torch.tensor(s)
        s_mask[r, :len(s)] = 1
    p_len = p_mask.sum(-1)[own]
    s_pos = p_len.unsqueeze(1) + torch.arange(ws).unsqueeze(0)
    mask2 = torch.cat([p_mask[own], s_mask], dim=1)
    last = torch.tensor([len(s) - 1 for s in suffixes])
    keep = torch.unique(last)  # sorted; the LM head runs on these positions only
    multi = any(len(tok) > 1 for _, opts in items for tok in opts)
    out2 = _forward(model, input_ids=s_ids.to(device), attention_mask=mask2.to(device),
                    position_ids=s_pos.to(device), use_cache=multi, logits_to_keep=keep.to(device),
                    **{_cache_kwarg(model): cache})
    logits = out2.logits
    if logits.shape[1] != len(keep):  # a head that ignored logits_to_keep returned every position
        logits = logits[:, keep.to(logits.device), :]
    col = torch.searchsorted(keep, last)
    first = F.log_softmax(logits[torch.arange(B), col.to(logits.device)].float(), dim=-1).cpu()
    scores_by_row = [[float(first[r, items[i][1][k][0]]) for k in range(n_opt)] for r, i in enumerate(order)]
    if multi:
        # 3. options longer than one token continue from prefix + suffix, one row per option
        cache = getattr(out2, "cache", None) or out2.past_key_values
        cache.batch_repeat_interleave(n_opt)
        T = max(len(tok) for _, opts in items for tok in opts) - 1
        o_ids = torch.full((B * n_opt, T), pad_id, dtype=torch.long)
        o_mask = torch.zeros((B * n_opt, T), dtype=torch.long)
        targets = torch.zeros((B * n_opt, T), dtype=torch.long)
        for r, i in enumerate(order):
            for k, tok in enumerate(items[i][1]):
                n = len(tok) - 1
                if n:
                    o_ids[r * n_opt + k, :n] = torch.tensor(tok[:-1])
                    targets[r * n_opt + k, :n] = torch.tensor(tok[1:])
                    o_mask[r * n_opt + k, :n] = 1
        ctx_len = (p_len + s_mask.sum(-1)).repeat_interleave(n_opt)
        o_pos = ctx_len.unsqueeze(1) + torch.arange(T).unsqueeze(0)
        mask3 = torch.cat([mask2.repeat_interleave(n_opt, 0), o_mask], dim=1)
        out3 = _forward(model, input_ids=o_ids.to(device), attention_mask=mask3.to(device),
                        position_ids=o_pos.to(device), use_cache=False, logits_to_keep=0,
                        **{_cache_kwarg(model): cache})
        logp = F.log_softmax(out3.logits[:, -T:, :].float(), dim=-1).cpu()
        rest = (logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * o_mask).sum(-1)
        for r in range(B):
            for k in range(n_opt):
                scores_by_row[r][k] += float(rest[r * n_opt + k])
    result: list[list[float]] = [[] for _ in items]
    for r, i in enumerate(order):
        result[i] = scores_by_row[r]
    return result
