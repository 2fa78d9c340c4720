"""Batched generation with the prompt formatting training uses.

Prompts are formatted with :func:`clo.formatting.encode_prompt` (chat template, or the plain
template for base models), sorted by token length so that a batch wastes little on padding,
left-padded, and decoded back into the caller's order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from clo.formatting import encode_prompt


def _eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for x in (tokenizer.eos_token_id, gen_eos):
        if x is None:
            continue
        for i in (x if isinstance(x, (list, tuple)) else [x]):
            if i not in ids:
                ids.append(int(i))
    return ids


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; cannot left-pad a batch")
    return int(pad)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` for token sequences of any lengths."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def iter_generate(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.6,
    top_p: float = 0.9, seed: int = 0, batch_size: int = 8,
    encode: Callable[[object, str], list[int]] = encode_prompt,
) -> Iterator[tuple[list[int], list[str]]]:
    """Yield ``(indices into prompts, texts)`` one batch at a time (longest prompts first).

    Callers that cache results per item consume this directly, so that an interrupted run keeps
    every finished batch. Sampling is seeded per batch (``seed + batch number``): the same
    prompts, batch size and seed give the same texts.
    """
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    encoded = [encode(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
    pad_id = _pad_id(tokenizer)
    eos = _eos_ids(model, tokenizer)
    device = next(model.parameters()).device
    sample = temperature > 0
    for b, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start:start + batch_size]
        ids, mask = left_pad([encoded[i] for i in idx], pad_id)
        kwargs = {"do_sample": sample, "max_new_tokens": max_new_tokens, "pad_token_id": pad_id,
                  "eos_token_id": eos or None}
        if sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:
            # Override sampling defaults a checkpoint's generation_config may carry.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        torch.manual_seed(seed + b)
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        new = out[:, ids.shape[1]:].tolist()
        texts = []
        for row in new:
            # Cut at the first end-of-sequence token: later positions are padding.
            for j, t in enumerate(row):
                if t in eos:
                    row = row[:j]
                    break
            texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
        yield idx, texts


def generate(
    model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.6,
    top_p: float = 0.9, seed: int = 0, batch_size: int = 8,
) -> list[str]:
    """Responses to ``prompts`` (same order): batched, left-padded, length-sorted; temperature 0
    decodes greedily, otherwise nucleus sampling (the paper: top-p 0.9, temperature 0.6)."""
    out: list[str | None] = [None] * len(prompts)
    for idx, texts in iter_generate(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
        top_p=top_p, seed=seed, batch_size=batch_size,
    ):
        for i, t in zip(idx, texts):
            out[i] = t
    return [t if t is not None else "" for t in out]
