"""A training directory belongs to one configuration; best/ is written once; LoRA keeps its adapter."""

import json

import pytest
import torch

from clo.config import config_from_dict
from clo.io import write_jsonl
from clo.train.distributed import micro_batches
from clo.train.trainer import RunMismatch, train


@pytest.fixture(scope="module")
def workdir(tiny_workdir, quadruples):
    return tiny_workdir("rundir", train=quadruples(8, 0), val=quadruples(4, 1))


def _cfg(workdir, **train):
    base = {"lr": 5e-3, "min_lr": 5e-3, "batch_size": 4, "eval_every": 1, "max_length": 64,
            "reference_cache": str(workdir / "refcache")}
    return config_from_dict({"model": str(workdir / "model"), "lang": "de", "train": {**base, **train}})


def _run(workdir, out, **kw):
    overwrite = kw.pop("overwrite", False)
    stop = kw.pop("stop_after_steps", None)
    return train(_cfg(workdir, **kw), workdir / "train.jsonl", workdir / "val.jsonl", out,
                 overwrite=overwrite, stop_after_steps=stop)


@pytest.mark.slow
def test_finished_run_is_not_returned_for_another_config(workdir, tmp_path):
    out = tmp_path / "run"
    first = _run(workdir, out, method="clo")
    assert _run(workdir, out, method="clo").metrics == first.metrics  # same config: the stored result
    with pytest.raises(RunMismatch, match=r"differing: train\.method, train\.trainable.*--overwrite"):
        _run(workdir, out, method="sft", trainable="full")
    redone = _run(workdir, out, method="sft", trainable="full", overwrite=True)
    assert redone.metrics["method"] == "sft" and redone.metrics["trainable"] == "full"
    assert json.loads((out / "run.json").read_text())["inputs"]["train"]["method"] == "sft"


def test_run_json_is_fingerprinted_by_the_one_definition_and_another_format_is_refused(workdir, tmp_path):
    import hashlib

    from clo.fingerprints import fingerprint

    out = tmp_path / "run"
    _run(workdir, out, stop_after_steps=1)
    record = json.loads((out / "run.json").read_text())
    assert record["fingerprint"] == fingerprint(record["inputs"])
    # The same inputs under a fingerprint computed another way: refused, never silently reused.
    record["fingerprint"] = hashlib.sha256(json.dumps(record["inputs"], sort_keys=True).encode()).hexdigest()[:16]
    assert record["fingerprint"] != fingerprint(record["inputs"])
    (out / "run.json").write_text(json.dumps(record))
    with pytest.raises(RunMismatch, match=r"differing: \(none: run\.json's fingerprint is of another format\)"):
        _run(workdir, out)


def test_killed_run_refuses_to_resume_with_another_lr_but_resumes_with_another_micro_batch(workdir, tmp_path):
    out = tmp_path / "run"
    _run(workdir, out, stop_after_steps=1)
    with pytest.raises(RunMismatch, match=r"differing: train\.lr$|differing: train\.lr\)"):
        _run(workdir, out, lr=1e-3, min_lr=5e-3)
    # How a run is computed (micro-batches, token budget) is not what it computes.
    res = _run(workdir, out, micro_batch_size=1, max_tokens_per_micro_batch=100)
    assert res.metrics["finished"] and res.metrics["steps"] == 2


def test_edited_data_file_is_another_run(workdir, tmp_path, quadruples):
    out = tmp_path / "run"
    data = tmp_path / "train.jsonl"
    data.write_text((workdir / "train.jsonl").read_text())
    cfg = _cfg(workdir)
    train(cfg, data, None, out)
    write_jsonl(data, quadruples(8, 7))
    with pytest.raises(RunMismatch, match=r"data\.train"):
        train(cfg, data, None, out)


def test_best_is_written_once_with_the_best_tensors(workdir, tmp_path, monkeypatch):
    from clo.train import trainer

    writes = []
    real = trainer._Stage.save_model
    monkeypatch.setattr(trainer._Stage, "save_model", lambda self, name, t: (writes.append(name), real(self, name, t)))
    res = _run(workdir, tmp_path / "run", lr=5e-2, min_lr=5e-2, keep_state=True)
    assert writes == ["best"]
    card = (res.best_checkpoint / "README.md").read_text()
    assert "- clo" in card and "- de" in card  # the model card: tags and languages
    state_summary = json.dumps(json.loads((res.best_checkpoint / "trainer_state.json").read_text()))
    assert str(res.metrics["best_val_loss"]) in state_summary
    # The kept model is the best validation step's, not the last step's.
    from transformers import AutoModelForCausalLM

    best = dict(AutoModelForCausalLM.from_pretrained(res.best_checkpoint).named_parameters())
    state = torch.load(tmp_path / "run" / "last" / "state.pt", weights_only=False)
    kept = state["best_trainable"]
    assert kept and all(torch.equal(best[n], t) for n, t in kept.items())
    if res.metrics["best_step"] != res.metrics["steps"]:
        assert any(not torch.equal(best[n], t) for n, t in state["trainable"].items())


@pytest.mark.slow
def test_lora_saves_the_adapter_beside_the_merged_model(workdir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    res = _run(workdir, tmp_path / "run", trainable="lora", lr=5e-2, min_lr=5e-2)
    best = res.best_checkpoint
    assert (best / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(best)
    base = AutoModelForCausalLM.from_pretrained(workdir / "model")
    adapted = PeftModel.from_pretrained(base, best / "adapter")
    ids = torch.tensor([[5, 17, 40, 99, 7, 3]])
    with torch.no_grad():
        a, b = merged(ids).logits, adapted(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(workdir / "model")(ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert (a - plain).abs().max() > 1e-3  # the adapter was trained


def test_micro_batches_are_cut_by_units_and_tokens_and_equal_in_number():
    tokens = {0: 50, 1: 10, 2: 30, 3: 30, 4: 200}.__getitem__
    # Round-robin shares: rank 0 gets 0, 2, 4; rank 1 gets 1, 3.
    assert micro_batches([0, 1, 2, 3, 4], 0, 2, tokens, max_tokens=80) == [([0, 2], True), ([4], True)]
    assert micro_batches([0, 1, 2, 3, 4], 1, 2, tokens, max_tokens=80) == [([1, 3], True), ([0], False)]
    assert micro_batches([0, 1, 2, 3, 4], 0, 2, tokens, max_units=1) == [([0], True), ([2], True), ([4], True)]
    # Fewer units than processes: the idle process runs one zero-weight filler.
    assert micro_batches([3], 1, 2, tokens) == [([3], False)]
    assert micro_batches([3], 0, 2, tokens) == [([3], True)]


def test_memory_plan_counts_the_dtypes_by_hand():
    from clo.models import select_trainable
    from clo.testing import tiny_model
    from clo.train.precision import GIB, memory_plan, upcast_trainable

    m = tiny_model("llama").to(torch.bfloat16)
    select_trainable(m, "attention")
    upcast_trainable(m, torch.float32)
    n_all = sum(p.numel() for p in m.parameters())
    n_tr = sum(p.numel() for p in m.parameters() if p.requires_grad)
    plan = memory_plan(m, world=2, sharded=False, checkpointing=True, tokens_per_micro_batch=1000)
    assert plan["weights_gib"] == round(((n_all - n_tr) * 2 + n_tr * 4) / GIB, 3)
    assert plan["gradients_gib"] == round(n_tr * 4 / GIB, 3) and plan["optimizer_gib"] == round(n_tr * 8 / GIB, 3)
    sharded = memory_plan(m, world=2, sharded=True, checkpointing=True, tokens_per_micro_batch=1000)
    assert sharded["optimizer_gib"] == round(n_tr * 4 / GIB, 3)
    # With checkpointing: (layers + 34) bf16 hidden vectors per token; without: 34 per layer.
    assert plan["activations_per_1k_tokens_gib"] == round(32 * 2 * (2 + 34) * 1000 / GIB, 3)


def test_cpu_defaults_leave_checkpointing_off_and_log_peak_memory(workdir, tmp_path):
    res = _run(workdir, tmp_path / "run")
    assert res.metrics["gradient_checkpointing"] is False  # auto: on for a GPU only
    assert res.metrics["peak_mem_gib"] > 0 and res.metrics["memory_plan_gib"]["weights_gib"] >= 0
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["train/peak_mem_gib"] > 0 for r in rows if "train/loss" in r)
