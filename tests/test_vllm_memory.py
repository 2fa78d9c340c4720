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


def _fake_vllm(monkeypatch, on_start):
    fake = types.ModuleType("vllm")
    fake.LLM = lambda **kw: on_start(kw) or types.SimpleNamespace()
    monkeypatch.setitem(sys.modules, "vllm", fake)


@pytest.mark.parametrize("named_by_spec", [True, False])
def test_the_transformers_model_is_released_before_the_engine_starts(monkeypatch, tmp_path, named_by_spec):
    """A task that used the transformers model (log-likelihoods, say) and then generates with vLLM:
    the model is gone, its memory returned to the GPU, before vLLM's engine reserves its share."""
    import gc
    import weakref

    from transformers import AutoModelForCausalLM

    from clo.config import config_from_dict
    from clo.eval.core import TaskContext
    from clo.testing import tiny_model, tiny_tokenizer

    tiny_model("llama", vocab_size=512).save_pretrained(tmp_path / "m")
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "m")
    loads = []

    def load():
        loads.append(1)
        return AutoModelForCausalLM.from_pretrained(tmp_path / "m")

    cfg = config_from_dict({"model": str(tmp_path / "m"), "lang": "de", "eval": {"backend": "vllm", "vllm": {"dtype": "bfloat16"}}})
    ctx = TaskContext(tok, cfg, None, "m", tmp_path / "out", "task", None, load,
                      str(tmp_path / "m") if named_by_spec else None)
    ref = weakref.ref(ctx.model)
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(ref() is None))
    _gpu(monkeypatch, free_gib=79.0)
    seen = {}

    def on_start(kw):
        gc.collect()  # whatever the engine's start-up would collect: the model must be unreachable by then
        seen["released"] = ref() is None
        seen["model"] = kw["model"]

    _fake_vllm(monkeypatch, on_start)
    assert ctx.generator is not None
    assert seen["released"] is True
    assert emptied and emptied[-1] is True  # the cache was emptied after the model was gone
    # By spec vLLM reads the checkpoint; in memory, a copy written once (the model loaded again for it).
    assert (seen["model"] == str(tmp_path / "m")) is named_by_spec
    assert len(loads) == (1 if named_by_spec else 2)
