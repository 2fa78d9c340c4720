"""``train.save: trained``: a ``best/`` that holds only the trained tensors and the base model's identity.

At paper scale most of a run's ``best/`` is the frozen base model, the same in every run of that
model: attention-only training of Llama-3-8B changes 1.34 B of 8.0 B parameters, so ``trained``
stores 2.7 GB (bf16) instead of 16 GB. The directory holds

- ``clo_trained.json``: the base model's spec and identity (:func:`clo.identity.model_identity`:
  its files' digest, or its hub commit), the dtype, the tensor file;
- ``trained.safetensors``: the trained tensors, named as in the base model's state dict;
- the tokenizer and the model card.

It has no ``config.json`` on purpose: ``from_pretrained`` refuses it instead of filling the
missing weights at random. This module writes the format; every loader in clo goes through
:func:`clo.models.resolve`, which materialises a full checkpoint once
(:func:`clo.models.materialise`, under ``$CLO_CACHE/materialised/``, keyed by the directory's
files) when an evaluation, a second training stage or a push needs one; the least recently used
are removed beyond ``$CLO_MATERIALISED_KEEP`` (default 4).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from clo.identity import model_identity

log = logging.getLogger(__name__)

MARKER = "clo_trained.json"
TENSORS = "trained.safetensors"


def is_trained_only(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def write_trained_only(target: Path, tensors: dict, base_spec: str, dtype_name: str, tokenizer) -> None:
    """Fill ``target`` (an empty directory) with ``tensors`` (full, on CPU) and the base's identity."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(target / TENSORS))
    meta = {"format": 1, "base": str(base_spec), "base_identity": model_identity(str(base_spec)),
            "dtype": dtype_name, "tensors": TENSORS, "n_tensors": len(tensors),
            "n_params": int(sum(v.numel() for v in tensors.values()))}
    (target / MARKER).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(target)
