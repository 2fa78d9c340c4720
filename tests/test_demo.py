"""The demo's pieces that need no model: data selection, its grid config, the printed summary."""

from __future__ import annotations

import csv
import json

import pytest

from clo import demo
from clo.experiments.config import expand, grid_from_dict
from clo.experiments.grid import plan
from clo.experiments.stages import write_json_atomic


def test_shared_data_dir_from_environment(monkeypatch, tmp_path, shared_data):
    monkeypatch.setenv("CLO_SHARED_DATA", str(shared_data))
    assert demo.shared_data_dir() == shared_data
    monkeypatch.setenv("CLO_SHARED_DATA", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"looked in \S*nope\); set CLO_SHARED_DATA"):
        demo.shared_data_dir()


def test_hub_is_not_asked_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert demo.hub_reachable() is False


def test_heldout_prompts_half_monolingual_half_crosslingual(tmp_path, shared_data):
    path = demo.heldout_prompts(shared_data, tmp_path / "h.json", 6, max_chars=300)
    prompts = json.loads(path.read_text(encoding="utf-8"))
    mono, cross = [], []
    for split, bucket in (("monolingual", mono), ("crosslingual", cross)):
        for f in sorted((shared_data / "language_confusion" / split).glob("*/de.csv")):
            bucket += [r["prompt"] for r in csv.DictReader(f.open(encoding="utf-8", newline=""))]
    assert len(prompts) == 6
    assert all(p in mono for p in prompts[:3]) and all(p in cross for p in prompts[3:])
    assert all(len(p) <= 300 for p in prompts)
    assert len(set(prompts)) == 6
    with pytest.raises(ValueError, match="only 0 German prompts of <= 1 characters"):
        demo.heldout_prompts(shared_data, tmp_path / "h2.json", 6, max_chars=1)


def test_demo_grid_config(tmp_path, shared_data):
    tree = demo.demo_tree(tmp_path / "d", shared_data, 48, {"source": "alpaca", "path": "x.json"})
    grid = grid_from_dict(tree, "demo")
    assert [r.run_id for r in expand(grid)] == ["smollm2-135m/de/base", "smollm2-135m/de/sft/nall",
                                                "smollm2-135m/de/clo/nall"]
    runs = expand(grid)
    assert {r.config.train.trainable for r in runs} == {"attention"}
    assert runs[2].config.train.method == "clo" and runs[2].config.data.n == 48
    assert runs[2].config.data.max_chars == demo.MAX_PAIR_CHARS
    assert runs[2].config.data.translator.kind == "causal" and runs[2].config.data.translator.model == "gemma-3-270m"
    assert plan(grid)["runs"][0]["evals"] == ["fidelity_de", "belebele_de", "belebele_en", "mmmlu_en"]
    assert grid.samples == demo.SAMPLE_PROMPTS


def test_summary_prints_headline_numbers_and_answers_side_by_side(tmp_path, shared_data):
    tree = demo.demo_tree(tmp_path, shared_data, 48, {"source": "alpaca", "path": "x.json"})
    grid = grid_from_dict(tree, "demo")
    write_json_atomic(tmp_path / "plan.json", plan(grid))
    put = lambda rid, key, m: write_json_atomic(
        tmp_path / "runs" / rid / "eval" / f"{key}.done.json", {"fingerprint": "f", "result": m})
    put("smollm2-135m/de/base", "fidelity_de", {"rate": 0.25, "n": 24})
    put("smollm2-135m/de/clo/nall", "fidelity_de", {"rate": 0.75, "n": 24})
    put("smollm2-135m/de/clo/nall", "belebele_de", {"accuracy": 0.5, "stderr": 0.1, "n": 24})
    write_json_atomic(tmp_path / "runs/smollm2-135m/de/base/samples.json",
                      [{"prompt": demo.SAMPLE_PROMPTS[0], "answer": "Sleep well."}])
    write_json_atomic(tmp_path / "runs/smollm2-135m/de/clo/nall/samples.json",
                      [{"prompt": demo.SAMPLE_PROMPTS[0], "answer": "Schlaf gut.\nGute Nacht."}])
    text = demo.summary(tmp_path, width=80)
    lines = text.splitlines()
    # sqrt(.25 * .75 / 24) = 0.0884 -> 8.8; the SFT run has nothing yet.
    assert next(l for l in lines if l.strip().startswith("base")).split() == ["base", "25.0", "±", "8.8", "—", "—", "—"]
    assert next(l for l in lines if l.strip().startswith("sft")).split() == ["sft", "—", "—", "—", "—"]
    assert next(l for l in lines if l.strip().startswith("clo")).split() == [
        "clo", "75.0", "±", "8.8", "50.0", "±", "10.0", "—", "—"]
    i = lines.index(f"Prompt: {demo.SAMPLE_PROMPTS[0]}")
    # three columns of (80 - 2 * 3) // 3 = 24 characters
    assert lines[i + 1] == "BASE".ljust(24) + " | " + "SFT".ljust(24) + " | CLO"
    assert lines[i + 3] == "Sleep well.".ljust(24) + " | " + "—".ljust(24) + " | Schlaf gut."
    assert lines[i + 4] == " " * 24 + " | " + " " * 24 + " | Gute Nacht."
    assert f"Prompt: {demo.SAMPLE_PROMPTS[1]}" in lines


def test_print_config_runs_without_models(tmp_path, capsys, monkeypatch, shared_data):
    from clo.cli import main

    monkeypatch.setenv("CLO_SHARED_DATA", str(shared_data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["demo", "--output-dir", str(tmp_path / "d"), "--pairs", "8", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "name: demo" in out and "n: 8" in out and "source: alpaca" in out
    assert f"path: {shared_data / 'sft_en' / 'alpaca_en_demo.json'}" in out
