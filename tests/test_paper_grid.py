"""Figures 3 and 5 as the paper draws them: every size judged against the baseline at the largest size."""

from __future__ import annotations

from pathlib import Path

import pytest

from clo.experiments.config import grid_from_dict, load_grid
from clo.experiments.graph import grid_stages, plan
from clo.io import write_json
from clo.report import write_report


def _grid(tmp_path: Path, baseline_size: str | None):
    tree = {"name": "g", "output_dir": str(tmp_path), "models": ["M"], "langs": ["de"], "include_base": True,
            "methods": ["sft", "clo"], "sizes": [200, None], "eval_jobs": [{"task": "alpacaeval"}]}
    if baseline_size:
        tree["baseline_size"] = baseline_size
    return grid_from_dict(tree)


def _pairs(grid) -> dict[str, str]:
    return {s.run.run_id: s.baseline.run_id for s in grid_stages(grid) if s.kind == "pairwise"}


def test_every_size_against_the_baseline_at_the_largest_size(tmp_path):
    assert _pairs(_grid(tmp_path, None)) == {"M/de/clo/n200": "M/de/sft/n200", "M/de/clo/nall": "M/de/sft/nall"}
    assert _pairs(_grid(tmp_path, "largest")) == {
        "M/de/sft/n200": "M/de/sft/nall", "M/de/clo/n200": "M/de/sft/nall", "M/de/clo/nall": "M/de/sft/nall"}
    # without the whole split the largest numbered size is the reference
    g = grid_from_dict({"name": "g", "output_dir": str(tmp_path), "models": ["M"], "langs": ["de"],
                        "methods": ["sft", "clo"], "sizes": [200, 6400], "baseline_size": "largest",
                        "eval_jobs": [{"task": "alpacaeval"}]})
    assert _pairs(g) == {"M/de/sft/n200": "M/de/sft/n6400", "M/de/clo/n200": "M/de/sft/n6400",
                         "M/de/clo/n6400": "M/de/sft/n6400"}
    p = plan(_grid(tmp_path, "largest"))
    assert p["baseline_size"] == "largest"
    assert "alpacaeval_de" in next(r for r in p["runs"] if r["run_id"] == "M/de/sft/n200")["evals"]


def test_figure3_draws_the_baseline_curve_against_its_largest_size(tmp_path):
    grid = _grid(tmp_path, "largest")
    write_json(tmp_path / "plan.json", plan(grid))
    for run_id, wr in (("M/de/sft/n200", 0.31), ("M/de/clo/n200", 0.52), ("M/de/clo/nall", 0.66)):
        write_json(tmp_path / "runs" / run_id / "eval" / "alpacaeval_de.done.json",
                   {"fingerprint": "0" * 16, "result": {"win_rate": wr, "stderr": 0.02, "n": 805}})
    out = write_report(tmp_path)
    assert "figure3_winrate_vs_size.png" in out["files"]
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    block = md.split("### Figure 3", 1)[1].split("\n### ", 1)[0]
    assert "Every size is judged against SFT at size all; the dashed line is 50 %." in block
    assert "| model | lang | size | SFT | CLO |" in block
    rows = {line.split(" | ")[2]: line.split(" | ")[3:] for line in block.splitlines() if line.startswith("| M |")}
    assert rows["200"][0].startswith("31.0 ± 2.0") and rows["200"][1].startswith("52.0 ± 2.0")
    assert rows["all"][0] == "—" and rows["all"][1].startswith("66.0 ± 2.0")


def test_the_sizes_preset_compares_with_the_largest_size():
    root = Path(__file__).resolve().parents[1]
    assert load_grid(root / "configs" / "sizes.yaml").baseline_size == "largest"
    assert load_grid(root / "configs" / "paper.yaml").baseline_size == "same"
    with pytest.raises(Exception, match="baseline_size"):
        grid_from_dict({"name": "g", "models": ["M"], "langs": ["de"], "methods": ["sft"], "baseline_size": "full"})
