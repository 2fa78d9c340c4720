"""Memory known before launch: the trainer's step on fake tensors (no weights) against the same step
on a real model, both under MemTracker; fused AdamW where the kernel exists."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from clo.models import select_trainable
from clo.train import memory

SMALL = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1000, max_position_embeddings=4096)


def _config():
    cfg = LlamaConfig(**SMALL)
    cfg._attn_implementation = "sdpa"
    return cfg


@pytest.mark.parametrize("trainable, checkpointing", [("attention", False), ("full", True)])
def test_estimate_within_5_percent_of_the_real_step(trainable, checkpointing):
    seqs = memory.synthetic_sequences(2048, SMALL["vocab_size"])
    est = memory.estimate(_config(), trainable=trainable, dtype=torch.float32, master=None, tokens=2048,
                          checkpointing=checkpointing, attention="sdpa", seqs=seqs)
    torch.manual_seed(0)
    model = LlamaForCausalLM(_config())
    select_trainable(model, trainable)
    real = memory.measure_step(model, seqs, compute_dtype=torch.float32, master=None, checkpointing=checkpointing,
                               device=torch.device("cpu"))
    assert est.peak_gib == pytest.approx(real.peak_gib, rel=0.05)
    # The parts are those of the model: parameters at their size, AdamW's two moments per trained one.
    n_all = sum(p.numel() for p in model.parameters())
    n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert est.parts_gib["param"] * 2**30 == pytest.approx(4 * n_all, rel=1e-6)
    assert est.parts_gib["opt"] * 2**30 == pytest.approx(2 * 4 * n_trained, rel=0.01)


def test_workload_tokens_and_quadruples():
    seqs = memory.synthetic_sequences(16384, 1000)
    assert len(seqs) % 4 == 0 and len(seqs) // 4 == round(16384 / 1558)
    assert sum(len(p) + len(r) for p, r in seqs) == pytest.approx(16384, rel=0.02)
    # en_en and en_tgt share the English prompt; tgt_tgt and tgt_en the target one (clo.train.losses.KEYS).
    assert seqs[0][0] == seqs[1][0] and seqs[2][0] == seqs[3][0] and seqs[0][1] == seqs[3][1]


def test_adamw_is_fused_on_cuda_only():
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert memory.adamw(p, 1e-3, 0.0, "cpu").defaults.get("fused") in (None, False)
    if torch.cuda.is_available():
        q = [torch.nn.Parameter(torch.zeros(3, device="cuda"))]
        assert memory.adamw(q, 1e-3, 0.0, "cuda").defaults["fused"] is True


def test_cli_estimate_memory_from_the_config_alone(tmp_path):
    _config().save_pretrained(tmp_path / "model")  # config.json only: no weights, no tokenizer
    proc = subprocess.run([sys.executable, "-m", "clo.cli", "train", "--estimate-memory", "--set",
                           f"model={tmp_path / 'model'}", "--set", "train.max_tokens_per_micro_batch=2048",
                           "--gpus", "2", "--set", "train.sharding=fsdp2"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    est = json.loads(proc.stdout)
    assert est["tokens_per_micro_batch"] == 2048 and est["gpus"] == 2 and est["sharded"]
    assert est["peak_gib_per_gpu"] == pytest.approx(sum(est["parts_gib"].values()), abs=0.02)
    assert "GiB per GPU" in proc.stderr
    one = subprocess.run([sys.executable, "-m", "clo.cli", "train", "--estimate-memory", "--set",
                          f"model={tmp_path / 'model'}", "--set", "train.max_tokens_per_micro_batch=2048"],
                         capture_output=True, text=True, timeout=300, check=False)
    single = json.loads(one.stdout)
    # Sharding halves parameters and optimiser state; activations stay per GPU.
    assert est["parts_gib"]["param"] == pytest.approx(single["parts_gib"]["param"] / 2, abs=0.01)
    assert est["parts_gib"]["act"] == pytest.approx(single["parts_gib"]["act"], abs=0.01)


def test_train_without_data_names_the_flag(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "clo.cli", "train", "--set", "model=x"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "--data is required" in proc.stderr and "Traceback" not in proc.stderr


def test_gpu_memory_picks_the_largest_token_budget_that_fits(tmp_path):
    from clo.config import config_from_dict

    _config().save_pretrained(tmp_path / "model")
    cfg = config_from_dict({"model": str(tmp_path / "model"), "lang": "de"})
    fit = memory.estimate_for_config(cfg, gpu_memory_gib=0.25)
    tokens = fit["suggested"]["train.max_tokens_per_micro_batch"]
    assert fit["fits"] and tokens % 512 == 0 and fit["peak_gib_per_gpu"] <= 0.25
    # Near the largest: 10 % more tokens no longer fit.
    over = memory.estimate_for_config(cfg, tokens=int(tokens * 1.1))
    assert over["peak_gib_per_gpu"] > 0.25 * 0.97
    tiny = memory.estimate_for_config(cfg, gpu_memory_gib=0.001)
    assert not tiny["fits"] and "before any activation" in tiny["note"]
