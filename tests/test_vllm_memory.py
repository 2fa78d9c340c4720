"""vLLM starts within the GPU memory that is free (a transformers model of an earlier task may hold
some): gpu_memory_utilization shrinks to fit, with a warning, instead of vLLM refusing to start."""

import logging
import sys
import types

import pytest
import torch

from clo.eval import generation

GIB = 2**30


def _gpu(monkeypatch, free_gib, total_gib=80.0):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (int(free_gib * GIB), int(total_gib * GIB)))


def test_utilization_is_kept_when_it_fits(monkeypatch):
    _gpu(monkeypatch, free_gib=79.0)
    assert generation.vllm_memory_utilization(0.85) == 0.85


def test_utilization_shrinks_to_what_is_free(monkeypatch, caplog):
    _gpu(monkeypatch, free_gib=50.0)  # 30 GiB held by an in-memory transformers model
    with caplog.at_level(logging.WARNING):
        got = generation.vllm_memory_utilization(0.85)
    assert got == pytest.approx(50 / 80 - 0.02, abs=1e-3)
    assert "50.0 GiB are free" in caplog.text


def test_nothing_free_is_an_error_that_says_what_to_do(monkeypatch):
    _gpu(monkeypatch, free_gib=4.0)
    with pytest.raises(RuntimeError, match="eval.backend=transformers"):
        generation.vllm_memory_utilization(0.85)


def test_the_engine_gets_the_fitted_utilization(monkeypatch, tmp_path):
    from clo.testing import tiny_model, tiny_tokenizer

    tiny_model("llama", vocab_size=512).save_pretrained(tmp_path)
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path)
    seen = {}
    fake = types.ModuleType("vllm")
    fake.LLM = lambda **kw: seen.update(kw) or types.SimpleNamespace()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    _gpu(monkeypatch, free_gib=40.0)
    generation.VLLMGenerator(str(tmp_path), tok, dtype="bfloat16", gpu_memory_utilization=0.85)
    assert seen["gpu_memory_utilization"] == pytest.approx(0.48, abs=1e-3)
