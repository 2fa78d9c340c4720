"""Reference log-probs: one no-grad pass over the data with the starting model, cached on disk.

The cache key: the model's identity by content (:func:`clo.identity.model_identity`: a digest of
a local directory's files, computed once per file and cached, or a hub id's commit), the dtype,
and the SHA-256 of exactly the token ids scored (which covers the data, the tokenizer, the
formatting and ``max_length``). A checkpoint whose weights were swapped is another model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from clo.identity import model_identity  # one definition for every stage; callers import it from here too
from clo.io import atomic_path
from clo.train.data import EncodedDataset
from clo.train.logprobs import pack_sequences, packed_sequence_logps

log = logging.getLogger(__name__)

def cache_key(model_spec: str, dtype: str, fingerprint: str) -> str:
    blob = json.dumps({"model": model_identity(model_spec), "dtype": dtype, "data": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    from clo.models import cache_root

    return cache_root() / "reference"


def _batches(dataset: EncodedDataset, tokens_per_batch: int) -> list[list[tuple[int, str]]]:
    """Every (example, key) sorted by length and cut into batches of ``tokens_per_batch`` tokens."""
    items = [(i, k) for i in range(len(dataset.examples)) for k in dataset.keys]
    items.sort(key=lambda it: dataset.examples[it[0]].length(it[1]))
    batches, cur, tokens = [], [], 0
    for it in items:
        n = dataset.examples[it[0]].length(it[1])
        if cur and tokens + n > tokens_per_batch:
            batches.append(cur)
            cur, tokens = [], 0
        cur.append(it)
        tokens += n
    if cur:
        batches.append(cur)
    return batches


@torch.no_grad()
def compute_logps(
    model, dataset: EncodedDataset, *, tokens_per_batch: int = 8192, row_capacity: int | None | str = "longest",
    chunk_size: int = 1024, desc: str = "reference log-probs", pad_id: int = 0, score_fn=None,
    rank: int = 0, world: int = 1,
) -> torch.Tensor:
    """``[n_examples, len(dataset.keys)]`` summed response log-probs, fp32, CPU: columns in the
    dataset's key order (``en_en en_tgt tgt_tgt tgt_en`` for one target language, :data:`clo.train.losses.KEYS`).

    Examples are sorted by length and packed ``tokens_per_batch`` tokens at a time. ``score_fn``
    scores a packed batch (default: ``model`` itself); with ``world`` processes, process ``rank``
    scores batches ``rank, rank + world, ...`` and the shares are summed over processes (each
    entry is scored by exactly one process, the others contribute 0), so every process returns
    the whole tensor. Every process runs as many forwards as the busiest one: a sharded or DDP
    model's forward is a collective.
    """
    device = next(model.parameters()).device
    score_fn = score_fn or (lambda b: packed_sequence_logps(model, b, chunk_size)[0])
    was_training = model.training
    model.eval()
    batches = _batches(dataset, tokens_per_batch)
    mine = batches[rank::world]
    n_calls = -(-len(batches) // world)
    out = torch.zeros(len(dataset.examples), len(dataset.keys), dtype=torch.float32)
    col = {k: j for j, k in enumerate(dataset.keys)}
    bar = tqdm(total=sum(len(b) for b in mine), desc=desc, unit="seq", disable=rank != 0)
    for c in range(n_calls):
        real = c < len(mine)
        chunk = mine[c] if real else batches[0]
        seqs = [dataset.examples[i].seqs[k] for i, k in chunk]
        cap = max(len(p) + len(r) for p, r in seqs) if row_capacity == "longest" else row_capacity
        sums = score_fn(pack_sequences(seqs, cap, pad_id).to(device))
        if not real:
            continue
        for (i, k), v in zip(chunk, sums.float().cpu().tolist()):
            out[i, col[k]] = v
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    if world > 1:
        from clo.train.distributed import all_reduce_sum

        out = all_reduce_sum(out.to(device), world).cpu()
    return out


def cached_reference(
    model, model_spec: str, dtype: str, datasets: dict[str, EncodedDataset], cache_dir: Path | None = None,
    *, rank: int = 0, world: int = 1, **kwargs,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Reference log-probs for each named dataset, from the cache or computed (and stored) now.

    Returns ``({name: [n, keys] tensor}, info)`` with ``info`` telling per dataset whether it was a
    cache hit, the key and the seconds spent computing. With several processes the pass is
    sharded (:func:`compute_logps`); it is read from the cache only when every process finds it,
    and process 0 alone writes it.
    """
    from clo.train.distributed import all_true

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    out, info = {}, {}
    for name, ds in datasets.items():
        key = cache_key(model_spec, dtype, ds.fingerprint())
        path = cache_dir / f"{key}.pt"
        if all_true(path.is_file(), device, world):
            out[name] = torch.load(path, map_location="cpu", weights_only=True)
            info[name] = {"key": key, "cached": True, "seconds": 0.0}
            log.info("reference log-probs for %s: cache hit %s", name, path)
            continue
        t0 = time.perf_counter()
        out[name] = compute_logps(model, ds, desc=f"reference log-probs ({name})", rank=rank, world=world, **kwargs)
        if rank == 0:
            with atomic_path(path) as tmp:
                torch.save(out[name], tmp)
        info[name] = {"key": key, "cached": False, "seconds": round(time.perf_counter() - t0, 3),
                      "processes": world}
        log.info("reference log-probs for %s: %d examples in %.1fs over %d process(es) -> %s", name,
                 len(ds.examples), info[name]["seconds"], world, path)
    return out, info
