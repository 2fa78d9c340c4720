"""A tiny end-to-end grid with the real stages: tiny random Llama, fixture data, SFT and CLO, German.

configs/tiny.yaml runs as the user would run it; the first attempt dies in an evaluation of the
CLO run (an injected failure), the second finishes without redoing any finished stage.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from clo.experiments.config import load_grid
from clo.experiments.grid import StageFunctions, run_grid

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from clo.testing import tiny_model, tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny-llama")
    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=512)
    model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id = (
        tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _counting(stages: StageFunctions, calls: Counter, fail_eval_of: str | None = None) -> StageFunctions:
    def train(cfg, tp, vp, out):
        calls[f"train:{cfg.train.method}"] += 1
        return stages.train(cfg, tp, vp, out)

    def evaluate(task, model, cfg, out, opts):
        calls[f"eval:{out.parent.parent.name}:{out.name}"] += 1
        if fail_eval_of and f"/{fail_eval_of}/" in str(out) and task == "mmmlu":
            raise RuntimeError("injected failure")
        return stages.evaluate(task, model, cfg, out, opts)

    def prebuilt(path, cfg, out):
        calls["data"] += 1
        return stages.prebuilt(path, cfg, out)

    def samples(model, cfg, prompts):
        calls["samples"] += 1
        return stages.samples(model, cfg, prompts)

    return replace(stages, train=train, evaluate=evaluate, prebuilt=prebuilt, samples=samples)


@pytest.mark.slow
def test_tiny_grid_end_to_end_resumes_after_a_failure(tmp_path, tiny_model_dir, shared_data):
    overrides = [f"output_dir={tmp_path / 'grid'}", f"models=[{{name: tiny-llama, spec: {tiny_model_dir}}}]",
                 f"base.eval.data_dir={shared_data}"]
    grid = load_grid(REPO / "configs" / "tiny.yaml", overrides)
    gdir = tmp_path / "grid"

    first = Counter()
    res = run_grid(grid, _counting(StageFunctions(), first, fail_eval_of="clo"), progress=False)
    assert list(res.failures) == ["tiny-llama/de/clo/nall"]
    assert res.failures["tiny-llama/de/clo/nall"] == "RuntimeError: injected failure"
    assert first["data"] == 1 and first["train:sft"] == 1 and first["train:clo"] == 1
    # The CLO run's checkpoint and its evaluations before the failure are kept.
    clo_dir = gdir / "runs/tiny-llama/de/clo/nall"
    assert (clo_dir / "train.done.json").is_file() and (clo_dir / "eval/belebele_de.done.json").is_file()
    assert not (clo_dir / "eval/mmmlu_en.done.json").exists()

    second = Counter()
    res2 = run_grid(grid, _counting(StageFunctions(), second), progress=False)
    assert res2.ok, res2.failures
    # Only what had not finished ran: CLO's MMLU, its fidelity and its samples, then the report.
    assert second == Counter({"eval:nall:mmmlu_en": 1, "eval:nall:fidelity_de": 1, "samples": 1})
    assert res2.ran == ["eval/tiny-llama/de/clo/nall/mmmlu_en", "eval/tiny-llama/de/clo/nall/fidelity_de",
                        "samples/tiny-llama/de/clo/nall", "report"]

    # Every run trained/evaluated for real: checkpoints load, metrics have the tasks' fields.
    ckpt = Path(json.loads((clo_dir / "train.done.json").read_text())["result"]["checkpoint"])
    assert (ckpt / "config.json").is_file()
    bel = json.loads((clo_dir / "eval/belebele_de.done.json").read_text())["result"]
    assert bel["n"] == 4 and 0.0 <= bel["accuracy"] <= 1.0
    assert (clo_dir / "eval/belebele_de/belebele-de.json").is_file()
    # The trained model's card lists its evaluation results once they are known.
    card_results = json.loads((ckpt / "eval_results.json").read_text())
    assert card_results["belebele:de"]["accuracy"] == bel["accuracy"] and "mmmlu:en" in card_results
    assert "belebele" in (ckpt / "README.md").read_text()

    rdir = gdir / "report"
    for name in ("report.md", "report.json", "table2_belebele.csv", "table3_mmmlu.csv", "fidelity.csv",
                 "samples.csv", "runs.csv"):
        assert (rdir / name).is_file(), name
    # No judge, one size, one CLO variant, MMMLU in English only: no win rates, Figure 3, ablations or
    # per-category MMMLU in the target language; listed, not drawn as gaps.
    omitted = {o["name"] for o in json.loads((rdir / "report.json").read_text(encoding="utf-8"))["omitted"]}
    assert omitted == {"table1_winrates", "table4_trainable", "table4_head_to_head", "table5_nll_langs",
                       "table9_judge_prompts", "preference", "figure3_winrate_vs_size", "figure4_mmmlu_categories",
                       "beyond_cl_losses", "beyond_multilingual"}
    assert not any((rdir / f"{name}.csv").exists() for name in omitted)
    assert not (rdir / "figure3_winrate_vs_size.png").exists()
    t2 = list(csv.DictReader((rdir / "table2_belebele.csv").open(encoding="utf-8")))
    assert [(r["model"], r["lang"], r["eval lang"]) for r in t2] == [("tiny-llama", "de", "de"), ("tiny-llama", "de", "en")]
    for row in t2:
        for col in ("Base", "SFT", "CLO"):
            # 4 questions: accuracy is a multiple of 25 %
            assert float(row[col]) in (0.0, 25.0, 50.0, 75.0, 100.0)
    t3 = list(csv.DictReader((rdir / "table3_mmmlu.csv").open(encoding="utf-8")))
    assert [(r["eval lang"], bool(r["Base"]), bool(r["SFT"]), bool(r["CLO"])) for r in t3] == [("en", True, True, True)]
    fid = list(csv.DictReader((rdir / "fidelity.csv").open(encoding="utf-8")))
    assert [r["metric"] for r in fid] == ["response rate (de)", "echoes (de)", "response rate, echoes excluded (de)"]
    assert all(fid[0][c] != "" for c in ("Base", "SFT", "CLO"))
    md = (rdir / "report.md").read_text(encoding="utf-8")
    assert "- Table 1: win rate (%) against SFT: not run by this grid; a judged win rate" in md
    assert "runs: 3 done." in md
    samples = list(csv.DictReader((rdir / "samples.csv").open(encoding="utf-8")))
    assert [s["prompt"] for s in samples] == ["Was ist die Hauptstadt von Frankreich?"]
