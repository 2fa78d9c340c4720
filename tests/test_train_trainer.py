"""The training loop end to end on a tiny random Llama: parameters, learning, resume, guards."""

import json
import math
from dataclasses import replace

import pytest
import torch

from clo.config import config_from_dict
from clo.data.records import RecordError
from clo.io import write_jsonl
from clo.train import methods
from clo.train.trainer import TrainingDiverged, plan_batches, train


@pytest.fixture(scope="module")
def workdir(tiny_workdir, quadruples):
    return tiny_workdir("tiny", train=quadruples(16, 0, "t"), val=quadruples(8, 1, "v"))


def _cfg(workdir, **train):
    base = {"lr": 5e-3, "min_lr": 5e-3, "batch_size": 8, "eval_every": 1, "max_length": 64,
            "reference_cache": str(workdir / "refcache"), "max_grad_norm": None}
    base.update(train)
    return config_from_dict({"model": str(workdir / "model"), "lang": "de", "train": base})


def _params(path):
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(path).named_parameters())


def _log(run, prefix="train/"):
    rows = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if any(k.startswith(prefix) for k in r)]


def test_plan_batches_shuffles_per_epoch_and_keeps_partial_batch():
    plan = plan_batches(5, 2, 2.0, seed=0)
    assert [len(b) for b in plan] == [2, 2, 1, 2, 2, 1]
    assert sorted(i for b in plan[:3] for i in b) == list(range(5))
    assert sorted(i for b in plan[3:] for i in b) == list(range(5))
    assert plan == plan_batches(5, 2, 2.0, seed=0)
    assert plan_batches(5, 2, 0.5, seed=0) == plan[:2]


def test_one_attention_step_changes_exactly_attention(workdir, tmp_path):
    res = train(_cfg(workdir, method="clo", epochs=0.5), workdir / "train.jsonl", None, tmp_path / "run")
    assert res.metrics["steps"] == 1
    before, after = _params(workdir / "model"), _params(res.best_checkpoint)
    attn = [n for n in before if ".self_attn." in n]
    assert len(attn) == 2 * 4  # 2 layers x q, k, v, o
    for n in before:
        if n in attn:
            assert not torch.equal(before[n], after[n]), f"{n} did not change"
        else:
            assert torch.equal(before[n], after[n]), f"{n} changed but is not an attention parameter"


@pytest.mark.slow
def test_short_clo_run_learns_both_directions(workdir, tmp_path):
    res = train(_cfg(workdir, method="clo", epochs=10, lr=2e-2, min_lr=2e-2, eval_every=100),
                workdir / "train.jsonl", None, tmp_path / "run")
    log = _log(tmp_path / "run")
    first, last = log[0], log[-1]
    # Step 1: policy = reference, so z = 0 in both directions and CL = 2 log 2.
    assert first["train/cl"] == pytest.approx(2 * math.log(2), abs=1e-6)
    assert abs(first["train/margin_en"]) < 1e-6 and abs(first["train/margin_tgt"]) < 1e-6
    assert last["train/loss"] < first["train/loss"] - 0.1
    assert last["train/cl"] < 1.2 and last["train/nll"] < first["train/nll"]
    assert last["train/acc_en"] >= 0.75 and last["train/acc_tgt"] >= 0.75
    assert res.metrics["train_loss"] == pytest.approx(last["train/loss"])


def test_mixed_precision_left_by_an_earlier_trainer_is_not_inherited(workdir, tmp_path):
    # A transformers/TRL Trainer (TRL defaults to bf16) leaves its mixed precision in accelerate's
    # process-wide AcceleratorState; a plain Accelerator() would then run our training forward
    # under bf16 autocast while the reference pass ran in fp32, and step 1's margins were not 0.
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # as TrainingArguments does before setting up its own
    assert Accelerator(mixed_precision="bf16", cpu=True).mixed_precision == "bf16"
    train(_cfg(workdir, method="clo", epochs=0.5), workdir / "train.jsonl", None, tmp_path / "run")
    assert AcceleratorState().mixed_precision == "no"
    first = _log(tmp_path / "run")[0]
    assert first["train/cl"] == pytest.approx(2 * math.log(2), abs=1e-6)
    assert abs(first["train/margin_en"]) < 1e-6 and abs(first["train/margin_tgt"]) < 1e-6


@pytest.mark.slow
def test_resume_equals_uninterrupted(workdir, tmp_path):
    cfg = _cfg(workdir, method="clo", epochs=1, batch_size=4, eval_every=2, lr=1e-2, min_lr=1e-4)
    full = train(cfg, workdir / "train.jsonl", workdir / "val.jsonl", tmp_path / "a")
    part = train(cfg, workdir / "train.jsonl", workdir / "val.jsonl", tmp_path / "b", stop_after_steps=3)
    assert not part.metrics["finished"] and part.metrics["steps"] == 3
    assert not (tmp_path / "b" / "result.json").exists()
    resumed = train(cfg, workdir / "train.jsonl", workdir / "val.jsonl", tmp_path / "b")
    assert resumed.metrics["steps"] == full.metrics["steps"] == 4
    a, b = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [r["step"] for r in b] == list(range(1, 5))  # entries after the checkpoint were replayed, not doubled
    for ra, rb in zip(a, b):
        assert rb["train/loss"] == pytest.approx(ra["train/loss"], abs=1e-5)
    assert resumed.metrics["best_val_loss"] == pytest.approx(full.metrics["best_val_loss"], abs=1e-5)
    pa, pb = _params(full.best_checkpoint), _params(resumed.best_checkpoint)
    for n in pa:
        torch.testing.assert_close(pa[n], pb[n], atol=1e-5, rtol=0)
    # A finished run returns its stored result without training again.
    again = train(cfg, workdir / "train.jsonl", workdir / "val.jsonl", tmp_path / "b")
    assert again.metrics == json.loads((tmp_path / "b" / "result.json").read_text())["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("trainable", ["attention", "lora"])
def test_precomputed_reference_equals_live(workdir, tmp_path, trainable):
    runs = {}
    for live in (False, True):
        cfg = _cfg(workdir, method="clo", epochs=1, batch_size=8, trainable=trainable, live_reference=live,
                   lr=1e-2, min_lr=1e-2)
        runs[live] = train(cfg, workdir / "train.jsonl", workdir / "val.jsonl", tmp_path / f"live{live}")
        assert bool(runs[live].metrics["reference"]) is not live  # precomputed runs record their cache entry
    for a, b in zip(_log(tmp_path / "liveFalse", "val/"), _log(tmp_path / "liveTrue", "val/")):
        for k in a:
            assert b[k] == pytest.approx(a[k], abs=1e-5), k
    la, lb = _log(tmp_path / "liveFalse"), _log(tmp_path / "liveTrue")
    assert [r["train/loss"] for r in la] == pytest.approx([r["train/loss"] for r in lb], abs=1e-5)
    # Step 2 (after one update) is where a wrong reference would show: margins are non-zero there.
    assert abs(la[1]["train/margin_tgt"]) > 1e-4


@pytest.mark.slow
def test_sft_plus_dpo_references_the_sft_model(workdir, tmp_path):
    res = train(_cfg(workdir, method="sft+dpo", epochs=1, batch_size=8), workdir / "train.jsonl",
                workdir / "val.jsonl", tmp_path / "run")
    assert set(res.metrics["stages"]) == {"sft", "dpo"}
    assert res.best_checkpoint == tmp_path / "run" / "dpo" / "best"
    assert res.metrics["stages"]["sft"]["units"] == 32  # 16 examples x (en row, tgt row)
    # The DPO stage's cached reference is the SFT model's log-probs, not the base model's.
    from clo.models import load_model
    from clo.train.data import load_dataset
    from clo.train.reference import compute_logps

    key = res.metrics["stages"]["dpo"]["reference"]["train"]["key"]
    cached = torch.load(workdir / "refcache" / f"{key}.pt", weights_only=True)
    sft_model, tok = load_model(str(tmp_path / "run" / "sft" / "best"), dtype="float32", device="cpu")
    base_model, _ = load_model(str(workdir / "model"), dtype="float32", device="cpu")
    ds = load_dataset(workdir / "train.jsonl", tok, 64, "de")
    torch.testing.assert_close(cached, compute_logps(sft_model, ds), atol=1e-3, rtol=0)
    assert (cached - compute_logps(base_model, ds)).abs().max() > 0.1
    dpo_first = _log(tmp_path / "run" / "dpo")[0]
    assert dpo_first["train/loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert json.loads((tmp_path / "run" / "result.json").read_text())["metrics"]["method"] == "sft+dpo"


@pytest.mark.parametrize("method,units", [("sft", 32), ("sft-eng", 16), ("sft-tgt", 16), ("dpo", 32)])
def test_baselines_train_on_their_units(workdir, tmp_path, method, units):
    res = train(_cfg(workdir, method=method, epochs=0.25, batch_size=8), workdir / "train.jsonl", None,
                tmp_path / "run")
    assert res.metrics["units"] == units and res.metrics["steps"] == math.ceil(units / 8 * 0.25)
    assert (res.best_checkpoint / "config.json").is_file()


def test_nll_langs_ablation_counts_english_tokens(workdir, tmp_path):
    logs = {}
    for langs in (["tgt"], ["tgt", "en"]):
        train(_cfg(workdir, method="clo", epochs=0.5, nll_langs=langs), workdir / "train.jsonl", None,
              tmp_path / "-".join(langs))
        logs[tuple(langs)] = _log(tmp_path / "-".join(langs))[0]["train/nll"]
    assert logs[("tgt",)] != pytest.approx(logs[("tgt", "en")], abs=1e-4)


def test_bad_rows_rejected_with_reasons(workdir, tmp_path, quadruples):
    rows = quadruples(8, 2)
    rows[1]["tgt_lang"] = "sw"
    rows[2]["x_tgt"] = " ".join(["Frage"] * 200)  # the prompt alone exceeds max_length
    rows[3]["y_en"] = " ".join(["dog"] * 200)  # only truncated
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    res = train(_cfg(workdir, method="clo", epochs=1), data, None, tmp_path / "run")
    rejected = [json.loads(ln) for ln in (tmp_path / "run" / "rejected.jsonl").read_text().splitlines()]
    assert [(r["id"], r["line"], r["field"]) for r in rejected] == [("r1", 2, "tgt_lang"), ("r2", 3, "x_tgt")]
    assert "'sw'" in rejected[0]["reason"] and "max_length is 64" in rejected[1]["reason"]
    assert res.metrics["rejected"]["train"] == 2 and res.metrics["examples"] == 6
    assert res.metrics["truncated"] == {"en_en": 1, "en_tgt": 0, "tgt_tgt": 0, "tgt_en": 1}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[4], "y_tgt": ""}) + "\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:2: field 'y_tgt'"):
        train(_cfg(workdir), bad, None, tmp_path / "run2")


def test_non_finite_loss_stops_and_keeps_last_good_state(workdir, tmp_path, monkeypatch):
    clo = methods.METHODS["clo"]
    calls = {"n": 0}

    def objective(logps, ref, nll, cfg, counts=None):
        loss, m = clo.objective(logps, ref, nll, cfg, counts)
        calls["n"] += 1
        return (loss * float("nan"), m) if calls["n"] == 3 else (loss, m)

    monkeypatch.setitem(methods.METHODS, "clo", replace(clo, objective=objective))
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 3"):
        train(_cfg(workdir, method="clo", batch_size=4, eval_every=2), workdir / "train.jsonl", None,
              tmp_path / "run")
    state = torch.load(tmp_path / "run" / "last" / "state.pt", weights_only=False)
    assert state["step"] == 2  # saved after step 2; the failed step 3 wrote nothing
    assert not (tmp_path / "run" / "result.json").exists()


def test_cli_maps_flags_onto_the_config(workdir, tmp_path, capsys):
    from clo.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--data", str(workdir / "train.jsonl"), "--output", str(out), "--method", "clo",
               "--nll-langs", "tgt,en", "--trainable", r"layers\.1\.self_attn\.(q|v)_proj",
               "--set", f"model={workdir / 'model'}", "--set", "lang=de", "--set", "train.epochs=0.5",
               "--set", "train.max_length=64", "--set", f"train.reference_cache={workdir / 'refcache'}"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["method"] == "clo" and printed["steps"] == 1
    metrics = json.loads((out / "result.json").read_text())["metrics"]
    assert metrics["trainable"] == r"layers\.1\.self_attn\.(q|v)_proj"
    assert metrics["trainable_params"] == 32 * 32 + 16 * 32  # q (32x32) and v (2 kv heads x 8 = 16 rows)
    before, after = _params(workdir / "model"), _params(out / "best")
    changed = sorted(n for n in before if not torch.equal(before[n], after[n]))
    assert changed == ["model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight"]
    assert main(["train", "--data", str(workdir / "train.jsonl"), "--set", "train.beta=-1"]) == 2
