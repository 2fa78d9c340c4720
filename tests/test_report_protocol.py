"""The report's captions name the judge prompt and system prompt the win rates were judged with."""

from __future__ import annotations

from pathlib import Path

from clo.experiments.config import grid_from_dict
from clo.experiments.grid import plan
from clo.io import write_json
from clo.report import write_report


def _grid(tmp_path: Path, metrics: dict[str, dict]) -> Path:
    grid = grid_from_dict({"name": "g", "output_dir": str(tmp_path), "models": ["M"], "langs": ["de"],
                           "methods": ["sft", "clo"], "sizes": [200, None],
                           "eval_jobs": [{"task": "alpacaeval"}, {"task": "alpacaeval", "lang": "en"}]})
    write_json(tmp_path / "plan.json", plan(grid))
    for (run_id, key), m in metrics.items():
        write_json(tmp_path / "runs" / run_id / "eval" / f"{key}.done.json",
                   {"fingerprint": "0" * 16, "result": m})
    return tmp_path


def _caption(md: str, title: str) -> str:
    return md.split(f"### {title}", 1)[1].split("\n| ", 1)[0]


def test_caption_names_the_judge_prompt(tmp_path):
    wr = {"win_rate": 0.6, "stderr": 0.02, "n": 805}
    d = _grid(tmp_path, {
        ("M/de/clo/nall", "alpacaeval_de"): wr | {"judge_prompt": "alpaca_eval@0123abcd", "system_prompt": "none"},
        ("M/de/clo/nall", "alpacaeval_en"): wr | {"judge_prompt": "alpaca_eval@0123abcd", "system_prompt": "none"},
        ("M/de/clo/n200", "alpacaeval_de"): wr | {"judge_prompt": "alpaca_eval@0123abcd", "system_prompt": "none"},
    })
    write_report(d)
    md = (d / "report" / "report.md").read_text(encoding="utf-8")
    assert "Judge prompt: `alpaca_eval@0123abcd`; system prompt: `none`." in _caption(md, "Table 1")
    assert "Judge prompt: `alpaca_eval@0123abcd`; system prompt: `none`." in _caption(md, "Figure 3")


def test_caption_says_when_cells_were_judged_differently(tmp_path):
    wr = {"win_rate": 0.6, "stderr": 0.02, "n": 805}
    d = _grid(tmp_path, {
        ("M/de/clo/nall", "alpacaeval_de"): wr | {"judge_prompt": "clo", "system_prompt": "answer-in-language"},
        ("M/de/clo/nall", "alpacaeval_en"): wr | {"judge_prompt": "alpaca_eval@0123abcd", "system_prompt": "none"},
        ("M/de/clo/n200", "alpacaeval_de"): wr,  # written before the variant was recorded
    })
    write_report(d)
    cap = _caption((d / "report" / "report.md").read_text(encoding="utf-8"), "Table 1")
    assert ("Judge prompts differ between cells: `alpaca_eval@0123abcd`, `clo`; system prompt: "
            "`answer-in-language`, `none`.") in cap
    assert "1 result(s) do not record their judge prompt." in cap


def test_sizes_say_what_was_trained_on_and_what_the_data_lacked(tmp_path):
    wr = {"win_rate": 0.6, "stderr": 0.02, "n": 805}
    d = _grid(tmp_path, {("M/de/clo/nall", "alpacaeval_de"): wr})
    # the build asked for 6400 examples and got a short source; the runs trained on what was left
    write_json(d / "data" / "de" / "data.done.json", {"fingerprint": "0" * 16, "result": {
        "train": 1140, "warnings": ["the source has 1200 usable English examples, fewer than data.n = 6400: "
                                    "the build trains on 1140 pairs (60 for validation, 0 rejected)"]}})
    for run_id, n in (("M/de/clo/nall", 1140), ("M/de/sft/nall", 1140), ("M/de/clo/n200", 200)):
        write_json(d / "runs" / run_id / "train.done.json",
                   {"fingerprint": "0" * 16, "result": {"checkpoint": "x", "metrics": {"examples": n}}})
    write_report(d)
    md = (d / "report" / "report.md").read_text(encoding="utf-8")
    cap = _caption(md, "Table 1")
    assert "Training size: all (1140 quadruples trained on)." in cap
    assert "Data: de: the source has 1200 usable English examples, fewer than data.n = 6400" in cap
    runs = md.split("### Runs", 1)[1]
    assert "| M/de/clo/n200 | missing | 200 |" in runs and "| M/de/clo/nall | partial | 1140 |" in runs
    assert "Data warnings: de: the source has 1200 usable English examples" in runs


def test_build_warns_about_a_short_source_and_clipped_subsets():
    from clo.data.build import size_warnings

    assert size_warnings(6400, 6400, 6080, 320, 0, [200, 3200, 6400]) == [
        "data.subsets 6400: the training split has 6080 pairs, so that size trains on 6080"]
    assert size_warnings(6400, 7, 6, 1, 0, [200, 6400]) == [
        "the source has 7 usable English examples, fewer than data.n = 6400: the build trains on 6 pairs "
        "(1 for validation, 0 rejected)",
        "data.subsets 200, 6400: the training split has 6 pairs, so those sizes train on 6"]
    assert size_warnings(200, 200, 190, 10, 0, [100]) == []


def test_a_short_source_is_a_warning_in_the_build_summary(tmp_path, monkeypatch):
    from clo.data.build import build_dataset
    from test_data_build import FAKE, _alpaca, _cfg  # the data tests' German stand-in translator

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "fake_translator.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(mods))
    import importlib

    import fake_translator

    importlib.reload(fake_translator)
    s = build_dataset(_cfg(_alpaca(tmp_path / "a.json", 7), n=6400, subsets=[5, 6400]), tmp_path / "out",
                      progress=False)
    assert (s["records_in"], s["train"], s["validation"]) == (7, 6, 1)
    assert s["warnings"] == [
        "the source has 7 usable English examples, fewer than data.n = 6400: the build trains on 6 pairs "
        "(1 for validation, 0 rejected)",
        "data.subsets 6400: the training split has 6 pairs, so that size trains on 6"]
    md = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert "## Warnings\n\n- the source has 7 usable English examples, fewer than data.n = 6400" in md


def test_table3_says_the_format_items_are_left_out(tmp_path):
    grid = grid_from_dict({"name": "g", "output_dir": str(tmp_path), "models": ["M"], "langs": ["de"],
                           "methods": ["sft", "clo"], "sizes": [None], "eval_jobs": [{"task": "mmmlu"}]})
    write_json(tmp_path / "plan.json", plan(grid))
    write_json(tmp_path / "runs" / "M/de/clo/nall" / "eval" / "mmmlu_de.done.json", {
        "fingerprint": "0" * 16, "result": {"accuracy": 0.5, "stderr": 0.01, "n": 14032, "format_items_left_out": 10}})
    write_report(tmp_path)
    cap = _caption((tmp_path / "report" / "report.md").read_text(encoding="utf-8"), "Table 3")
    assert "10 questions trained on as format items (the paper's Appendix D) are left out of the evaluation." in cap
