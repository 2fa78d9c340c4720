"""A finished run keeps best/ and drops its resumable state unless train.keep_state; the dry run's
disk plan counts what stays."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoModelForCausalLM

from clo.config import config_from_dict
from clo.train.config import TrainConfig
from clo.train.trainer import run_inputs, train


@pytest.fixture(scope="module")
def workdir(tiny_workdir):
    rec = {"tgt_lang": "de", "x_en": "what is the cat", "y_en": "the cat runs", "x_tgt": "was ist die Katze",
           "y_tgt": "die Katze läuft"}
    return tiny_workdir("ckpt", train=[{**rec, "id": str(i)} for i in range(4)])


def _cfg(d, **train):
    return config_from_dict({"model": str(d / "model"), "lang": "de", "train": {
        "batch_size": 2, "max_length": 64, "eval_every": 1, "reference_cache": str(d / "ref"), **train}})


def test_finished_run_drops_its_state_unless_kept(workdir, tmp_path):
    # Interrupted: the state stays, for resumption.
    part = train(_cfg(workdir), workdir / "train.jsonl", None, tmp_path / "run", stop_after_steps=1)
    assert not part.metrics["finished"] and (tmp_path / "run" / "last" / "state.pt").is_file()
    # Resumed to the end: best/ is there and loads, the state is gone.
    done = train(_cfg(workdir), workdir / "train.jsonl", None, tmp_path / "run")
    assert done.metrics["finished"] and done.metrics["steps"] == 2
    assert not (tmp_path / "run" / "last").exists()
    assert AutoModelForCausalLM.from_pretrained(done.best_checkpoint) is not None
    kept = train(_cfg(workdir, keep_state=True), workdir / "train.jsonl", None, tmp_path / "kept")
    assert kept.metrics["finished"] and (tmp_path / "kept" / "last" / "state.pt").is_file()


def test_keep_state_does_not_change_what_a_run_is(workdir):
    # Operational: the same run with or without its state afterwards (no refusal to resume).
    a, b = (run_inputs(_cfg(workdir, keep_state=keep), workdir / "train.jsonl", None) for keep in (False, True))
    assert a == b


def test_disk_plan_counts_the_state_only_when_kept():
    from clo.experiments import estimate

    size = estimate.ModelSize(8.0e9, 1.34e9, "test")
    run = lambda **tc: SimpleNamespace(method="clo", config=SimpleNamespace(train=TrainConfig(dtype="bfloat16", **tc)))
    assert estimate.checkpoint_bytes(run(), size) == 2 * 8.0e9  # best/ in bf16 only
    assert estimate.checkpoint_bytes(run(keep_state=True), size) == 2 * 8.0e9 + 16 * 1.34e9
    full = estimate.checkpoint_bytes(run(keep_state=True, trainable="full"), size)
    assert full == 2 * 8.0e9 + 16 * 8.0e9


def test_save_trained_keeps_the_trained_tensors_and_loads_as_the_full_model(workdir, tmp_path, monkeypatch):
    import torch

    from clo.models import ModelLoadError, load_model, resolve
    from clo.train.saved import MARKER, TENSORS

    monkeypatch.setenv("CLO_CACHE", str(tmp_path / "cache"))
    full = train(_cfg(workdir), workdir / "train.jsonl", None, tmp_path / "full")
    small = train(_cfg(workdir, save="trained"), workdir / "train.jsonl", None, tmp_path / "small")
    best = small.best_checkpoint
    assert (best / MARKER).is_file() and (best / TENSORS).is_file() and not (best / "config.json").exists()
    meta = json.loads((best / MARKER).read_text())
    base = dict(AutoModelForCausalLM.from_pretrained(workdir / "model").named_parameters())
    attention = {n for n in base if ".self_attn." in n}
    assert meta["n_tensors"] == len(attention) and meta["n_params"] == sum(base[n].numel() for n in attention)
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*.safetensors"))
    assert size(best) < size(full.best_checkpoint) / 2
    # Any loader resolves it to a full checkpoint equal to the full run's best/, built once.
    model, _ = load_model(str(best), device="cpu", dtype="float32")
    want = dict(AutoModelForCausalLM.from_pretrained(full.best_checkpoint).named_parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, want[n], atol=0, rtol=0, msg=n)
    assert resolve(str(best)) == resolve(str(best)) != str(best)
    assert (Path(resolve(str(best))) / "README.md").is_file()  # the model card travels with it
    from clo.hub import resolve_directory

    pushed = resolve_directory(tmp_path / "small")  # `clo push` uploads the full model, not the tensors alone
    assert (pushed / "config.json").is_file() and str(pushed) == resolve(str(best))
    # A base that changed since training is refused, not silently combined.
    (best / MARKER).write_text(json.dumps({**meta, "base_identity": {"sha256": "0" * 64, "files": 1}}))
    with pytest.raises(ModelLoadError, match="changed since training"):
        resolve(str(best))


def test_save_trained_with_lora_is_refused():
    with pytest.raises(ValueError, match="save=trained with train.trainable=lora"):
        TrainConfig(save="trained", trainable="lora")


def test_disk_plan_with_save_trained():
    from clo.experiments import estimate

    size = estimate.ModelSize(8.0e9, 1.34e9, "test")
    run = SimpleNamespace(method="sft+dpo", config=SimpleNamespace(train=TrainConfig(dtype="bfloat16", save="trained")))
    assert estimate.checkpoint_bytes(run, size) == 2 * 2 * 1.34e9


def test_process_group_timeout_is_a_config_key(workdir, tmp_path, monkeypatch):
    import datetime

    import accelerate

    seen = []
    real = accelerate.PartialState

    def recording(*a, **kw):
        seen.append(kw.get("timeout"))
        return real(*a, **kw)

    monkeypatch.setattr(accelerate, "PartialState", recording)
    train(_cfg(workdir, process_group_timeout_s=2400), workdir / "train.jsonl", None, tmp_path / "run",
          stop_after_steps=1)
    assert seen and seen[0] == datetime.timedelta(seconds=2400)
    assert TrainConfig().process_group_timeout_s == 1800  # longer than NCCL's 600 s default
