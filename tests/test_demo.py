"""The demo's pieces that need no model: data selection, its grid config, the printed summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from clo import demo
from clo.experiments.config import expand, grid_from_dict
from clo.experiments.grid import plan
from clo.io import write_json


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
    # What CLO changes, measured on held-out quadruples, and the language of generated answers;
    # BELEBELE and MMLU measured nothing above their noise at this size.
    assert plan(grid)["runs"][0]["evals"] == ["preference_de", "fidelity_de"]
    jobs = {j.task: j for j in grid.eval_jobs}
    assert jobs["preference"].opts["held_out_file"] == str(demo.heldout_path(tmp_path / "d"))
    assert jobs["fidelity"].opts["max_new_tokens"] == demo.FIDELITY_NEW_TOKENS
    assert grid.samples == demo.SAMPLE_PROMPTS


def test_heldout_pool_leaves_out_the_training_prompts(shared_data):
    rows = json.loads((shared_data / "sft_en" / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    full = demo.heldout_pool(shared_data, [])
    text = lambda r: r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
    # Distinct pairs (the file repeats some: the first of each), short enough, in file order.
    seen, expected = set(), []
    for r in rows:
        if (text(r), r["output"]) not in seen and len(text(r)) + len(r["output"]) <= demo.HELDOUT_MAX_CHARS:
            expected.append(r)
        seen.add((text(r), r["output"]))
    assert full == expected
    train = [text(r) for r in full[:10]]
    assert demo.heldout_pool(shared_data, train) == full[10:]


def test_build_heldout_translates_more_until_enough_pass(tmp_path, shared_data, monkeypatch):
    """The data build is stubbed: half of the pairs pass, so 88 pairs give 44 and more are translated."""
    calls = []

    def fake_build(cfg, out_dir, *, progress=True, overwrite=False):
        from clo.data.build import build_inputs, fingerprint
        from clo.data.records import CrossLingualRecord, write_records

        pairs = json.loads(Path(cfg.data.path).read_text(encoding="utf-8"))
        assert cfg.data.n == len(pairs) and cfg.data.val_fraction == 0.0 and cfg.data.max_chars is None
        calls.append(len(pairs))
        recs = [CrossLingualRecord(id=f"h{i}", tgt_lang="de", x_en=p["instruction"], y_en=p["output"],
                                   x_tgt="de " + p["instruction"], y_tgt="de " + p["output"])
                for i, p in enumerate(pairs) if i % 2 == 0]
        write_records(recs, out_dir / "train.jsonl")
        s = {"records_out": len(recs), "fingerprint": fingerprint(build_inputs(cfg))}
        (out_dir / "summary.json").write_text(json.dumps(s))
        return s

    monkeypatch.setattr("clo.data.build.build_dataset", fake_build)
    tree = demo.demo_tree(tmp_path, shared_data, 48, {"source": "alpaca",
                                                      "path": str(shared_data / "sft_en" / "alpaca_en_demo.json")})
    grid = grid_from_dict(tree, "demo")
    got = demo.build_heldout(grid, shared_data, progress=False)
    # 88 -> 44 passed; + max(22, 20) = 110 -> 55; + 22 = 132 -> 66 >= 64
    assert calls == [88, 110, 132] and got["passed"] == 66 and got["pairs"] == 132
    assert got["path"] == str(demo.heldout_path(tmp_path))
    assert demo.heldout_path(tmp_path).read_text() == (tmp_path / "heldout" / "de" / "train.jsonl").read_text()
    # No English prompt the runs train on is held out.
    from clo.data.records import read_records
    from clo.data.sources import load_examples
    from clo.experiments.config import expand

    training = {ex.x_en for ex in load_examples(expand(grid)[-1].config.data, "de")}
    assert not training & {r.x_en for r in read_records(demo.heldout_path(tmp_path))}
    # Run again: the finished build is read back, nothing rebuilt.
    assert demo.build_heldout(grid, shared_data, progress=False)["passed"] == 66 and calls == [88, 110, 132]


def _pref_records(tgt: list[int]) -> list[dict]:
    return [{"id": f"r{i}", "tgt_preferred": bool(t), "en_preferred": True, "margin_tgt": 0.0, "margin_en": 0.0,
             "nll_tgt": 2.0, "nll_en": 1.0} for i, t in enumerate(tgt)]


def test_summary_prints_headline_numbers_and_answers_side_by_side(tmp_path, shared_data):
    from clo.eval.preference import summarize

    tree = demo.demo_tree(tmp_path, shared_data, 48, {"source": "alpaca", "path": "x.json"})
    grid = grid_from_dict(tree, "demo")
    write_json(tmp_path / "plan.json", plan(grid))

    def put(rid, key, m, records=None):
        write_json(tmp_path / "runs" / rid / "eval" / f"{key}.done.json", {"fingerprint": "f", "result": m})
        if records is not None:
            task, _, lang = key.rpartition("_")
            write_json(tmp_path / "runs" / rid / "eval" / key / f"{task}-{lang}.json",
                       {"metrics": m, "records": records})

    put("smollm2-135m/de/base", "fidelity_de", {"rate": 0.25, "n": 24, "echo_rate": 0.25,
                                                 "rate_excluding_echoes": 0.0, "n_excluding_echoes": 18})
    put("smollm2-135m/de/clo/nall", "fidelity_de", {"rate": 0.75, "n": 24})
    for rid, t in (("smollm2-135m/de/base", [0, 0, 0, 1]), ("smollm2-135m/de/sft/nall", [1, 0, 0, 1]),
                   ("smollm2-135m/de/clo/nall", [1, 1, 0, 1])):
        recs = _pref_records(t)
        put(rid, "preference_de", summarize(recs), recs)
    write_json(tmp_path / "runs/smollm2-135m/de/base/samples.json",
               [{"prompt": demo.SAMPLE_PROMPTS[0], "answer": "Sleep well."}])
    write_json(tmp_path / "runs/smollm2-135m/de/clo/nall/samples.json",
               [{"prompt": demo.SAMPLE_PROMPTS[0], "answer": "Schlaf gut.\nGute Nacht."}])
    text = demo.summary(tmp_path, width=80)
    lines = text.splitlines()
    row = lambda name, start=0: next(l for l in lines[start:] if l.strip().startswith(name)).split()
    # sqrt(.25 * .75 / 24) = 0.0884 -> 8.8; echoes 25.0 ± 8.8; none of the 18 others German: 0.0 ± 0.0;
    # prefers de: 1 of 4 (SE of 0/1 values, ddof 1: 25.0); en always; NLL 2 and 1 nats per token.
    # Each ± with the count it rests on: 0.0 ± 0.0 of 18 answers is not 0.0 ± 0.0 of 4.
    assert row("base") == ["base", "25.0", "±", "8.8", "(n=24)", "25.0", "±", "8.8", "(n=24)", "0.0", "±", "0.0",
                           "(n=18)", "25.0", "±", "25.0", "(n=4)", "100.0", "±", "0.0", "(n=4)", "2.000", "±", "0.000",
                           "(n=4)", "1.000", "±", "0.000", "(n=4)"]
    # The CLO run has no echo counts (an older result): gaps, not zeros.
    assert row("clo")[:8] == ["clo", "75.0", "±", "8.8", "(n=24)", "—", "—", "75.0"]
    i = next(k for k, l in enumerate(lines) if l.startswith("Paired differences on the same 4 held-out"))
    # CLO − SFT: d = (0, 1, 0, 0): 25 ± 25 points; SFT − base: the same; CLO − base: d = (1, 1, 0, 0): 50 ± 28.9
    assert row("CLO − SFT", i) == ["CLO", "−", "SFT", "25.0", "±", "25.0", "(n=4)", "0.0", "±", "0.0", "(n=4)",
                                   "0.000", "±", "0.000", "(n=4)", "0.000", "±", "0.000", "(n=4)"]
    assert row("CLO − Base", i)[3:7] == ["50.0", "±", "28.9", "(n=4)"]
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
