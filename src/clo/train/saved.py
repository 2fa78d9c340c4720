"""``train.save: trained``: a ``best/`` that holds only the trained tensors and the base model's identity.

At paper scale most of a run's ``best/`` is the frozen base model, the same in every run of that
model: attention-only training of Llama-3-8B changes 1.34 B of 8.0 B parameters, so ``trained``
stores 2.7 GB (bf16) instead of 16 GB. The directory holds

- ``clo_trained.json``: the base model's spec and identity (:func:`clo.identity.model_identity`:
  its files' digest, or its hub commit), the dtype, the tensor file;
- ``trained.safetensors``: the trained tensors, named as in the base model's state dict;
- the tokenizer and the model card.

It has no ``config.json`` on purpose: ``from_pretrained`` refuses it instead of filling the
missing weights at random. Every loader in clo goes through :func:`clo.models.resolve`, which
materialises a full checkpoint once (under ``$CLO_CACHE/materialised/``, keyed by the directory's
files) when an evaluation, a second training stage or a push needs one; the least recently used
are removed beyond ``$CLO_MATERIALISED_KEEP`` (default 4).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = "clo_trained.json"
TENSORS = "trained.safetensors"


def is_trained_only(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def write_trained_only(target: Path, tensors: dict, base_spec: str, dtype_name: str, tokenizer) -> None:
    """Fill ``target`` (an empty directory) with ``tensors`` (full, on CPU) and the base's identity."""
    from safetensors.torch import save_file

    from clo.identity import model_identity

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(target / TENSORS))
    meta = {"format": 1, "base": str(base_spec), "base_identity": model_identity(str(base_spec)),
            "dtype": dtype_name, "tensors": TENSORS, "n_tensors": len(tensors),
            "n_params": int(sum(v.numel() for v in tensors.values()))}
    (target / MARKER).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(target)


def materialise(path: str | Path) -> Path:
    """The full checkpoint of a trained-only directory: made once, then reused.

    Refused (:class:`clo.models.ModelLoadError`) when the base model is no longer what it was at
    training time (its identity differs), or when a trained tensor has no place in it.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clo.fingerprints import fingerprint
    from clo.identity import directory_identity, model_identity
    from clo.io import atomic_dir
    from clo.models import ModelLoadError, cache_root, resolve

    path = Path(path)
    meta = json.loads((path / MARKER).read_text(encoding="utf-8"))
    key = fingerprint(directory_identity(path))
    target = cache_root() / "materialised" / key
    if (target / ".complete").is_file():
        (target / ".complete").touch()  # recently used: kept by the eviction below
        return target
    base = meta["base"]
    now = model_identity(base)
    if now != meta["base_identity"]:
        raise ModelLoadError(f"{path / MARKER}: base model {base} changed since training "
                             f"(identity {meta['base_identity']} then, {now} now); cannot rebuild the trained model")
    log.info("materialising %s on %s (once; cached in %s)", path, base, target)
    model = AutoModelForCausalLM.from_pretrained(resolve(base), dtype=getattr(torch, meta["dtype"]))
    tensors = load_file(str(path / meta["tensors"]))
    state = model.state_dict()
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise ModelLoadError(f"{path / meta['tensors']}: {len(unknown)} tensors not in {base} (first: {unknown[0]})")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(state[name].shape):
            raise ModelLoadError(f"{path / meta['tensors']}: {name} has shape {tuple(t.shape)}, "
                                 f"{base} has {tuple(state[name].shape)}")
    model.load_state_dict(tensors, strict=False)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(path).save_pretrained(tmp)
        for f in path.iterdir():  # the model card and training summary travel with the model
            if f.is_file() and f.name not in (MARKER, meta["tensors"]) and not (tmp / f.name).exists():
                (tmp / f.name).write_bytes(f.read_bytes())
        (tmp / ".complete").write_text(f"materialised from {path}\n", encoding="utf-8")
    _evict(target.parent, keep=target)
    return target


def _evict(root: Path, keep: Path) -> None:
    """Keep the ``$CLO_MATERIALISED_KEEP`` (default 4) most recently used materialisations: a grid
    evaluates its runs one after another, so the cache does not grow back to a full model per run."""
    import os
    import shutil

    limit = max(1, int(os.environ.get("CLO_MATERIALISED_KEEP", "4")))
    done = sorted((d for d in root.iterdir() if (d / ".complete").is_file()),
                  key=lambda d: (d / ".complete").stat().st_mtime, reverse=True)
    for d in [d for d in done if d != keep][limit - 1:]:
        log.info("removing the materialised model %s (least recently used)", d)
        shutil.rmtree(d, ignore_errors=True)
