"""Reference log-probs: one no-grad pass over the data with the starting model, cached on disk.

The cache key is cheap: the model's identity (its spec, and for a local directory the names,
sizes and modification times of its weight files: no hashing of billions of weights), the dtype,
and the SHA-256 of exactly the token ids scored (which covers the data, the tokenizer, the
formatting and ``max_length``). A changed fine-tuned checkpoint in place changes its mtimes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from clo.train.data import EncodedDataset
from clo.train.logprobs import pack_sequences, packed_sequence_logps
from clo.train.losses import KEYS

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def model_identity(spec: str) -> dict:
    from clo.models import resolve

    path = Path(resolve(spec))
    ident: dict = {"spec": spec}
    if path.is_dir():
        ident["path"] = str(path.resolve())
        ident["files"] = sorted(
            (f.name, f.stat().st_size, f.stat().st_mtime_ns)
            for f in path.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)
        )
    return ident


def cache_key(model_spec: str, dtype: str, fingerprint: str) -> str:
    blob = json.dumps({"model": model_identity(model_spec), "dtype": dtype, "data": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    from clo.models import cache_root

    return cache_root() / "reference"


@torch.no_grad()
def compute_logps(
    model, dataset: EncodedDataset, *, tokens_per_batch: int = 8192, row_capacity: int | None | str = "longest",
    chunk_size: int = 1024, desc: str = "reference log-probs", pad_id: int = 0,
) -> torch.Tensor:
    """``[n_examples, 4]`` summed response log-probs (columns in :data:`KEYS` order), fp32, CPU.

    Examples are sorted by length and packed ``tokens_per_batch`` tokens at a time.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    items = [(i, k) for i in range(len(dataset.examples)) for k in KEYS]
    items.sort(key=lambda it: dataset.examples[it[0]].length(it[1]))
    out = torch.empty(len(dataset.examples), len(KEYS), dtype=torch.float32)
    col = {k: j for j, k in enumerate(KEYS)}
    bar = tqdm(total=len(items), desc=desc, unit="seq")
    start = 0
    while start < len(items):
        end, tokens = start, 0
        while end < len(items) and (end == start or tokens + dataset.examples[items[end][0]].length(items[end][1])
                                    <= tokens_per_batch):
            tokens += dataset.examples[items[end][0]].length(items[end][1])
            end += 1
        chunk = items[start:end]
        seqs = [dataset.examples[i].seqs[k] for i, k in chunk]
        cap = max(len(p) + len(r) for p, r in seqs) if row_capacity == "longest" else row_capacity
        sums, _ = packed_sequence_logps(model, pack_sequences(seqs, cap, pad_id).to(device), chunk_size)
        for (i, k), v in zip(chunk, sums.cpu().tolist()):
            out[i, col[k]] = v
        bar.update(len(chunk))
        start = end
    bar.close()
    model.train(was_training)
    return out


def cached_reference(
    model, model_spec: str, dtype: str, datasets: dict[str, EncodedDataset], cache_dir: Path | None = None,
    **kwargs,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Reference log-probs for each named dataset, from the cache or computed (and stored) now.

    Returns ``({name: [n, 4] tensor}, info)`` with ``info`` telling per dataset whether it was a
    cache hit, the key and the seconds spent computing.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    out, info = {}, {}
    for name, ds in datasets.items():
        key = cache_key(model_spec, dtype, ds.fingerprint())
        path = cache_dir / f"{key}.pt"
        if path.is_file():
            out[name] = torch.load(path, map_location="cpu", weights_only=True)
            info[name] = {"key": key, "cached": True, "seconds": 0.0}
            log.info("reference log-probs for %s: cache hit %s", name, path)
            continue
        t0 = time.perf_counter()
        out[name] = compute_logps(model, ds, desc=f"reference log-probs ({name})", **kwargs)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        torch.save(out[name], tmp)
        tmp.replace(path)
        info[name] = {"key": key, "cached": False, "seconds": round(time.perf_counter() - t0, 3)}
        log.info("reference log-probs for %s: %d examples in %.1fs -> %s", name, len(ds.examples),
                 info[name]["seconds"], path)
    return out, info
