"""A seeds axis: one trained run per seed, reports with mean ± SD over the seeds."""

from __future__ import annotations

import pytest

from clo.experiments.config import expand, grid_from_dict
from clo.experiments.graph import grid_stages, plan
from clo.io import write_json
from clo.report import write_report


def _grid(tmp_path, **kw):
    return grid_from_dict({"name": "g", "output_dir": str(tmp_path), "models": ["M"], "langs": ["de"],
                           "methods": ["sft", "clo"], "sizes": [None], "include_base": True,
                           "eval_jobs": [{"task": "belebele"}, {"task": "alpacaeval"}], **kw})


def test_one_run_per_seed_each_against_the_baseline_of_its_seed(tmp_path):
    runs = expand(_grid(tmp_path, seeds=[0, 1, 2]))
    trained = [(r.run_id, r.config.train.seed) for r in runs if r.method]
    assert trained == [("M/de/sft/nall/s0", 0), ("M/de/sft/nall/s1", 1), ("M/de/sft/nall/s2", 2),
                       ("M/de/clo/nall/s0", 0), ("M/de/clo/nall/s1", 1), ("M/de/clo/nall/s2", 2)]
    assert [r.run_id for r in runs if not r.method] == ["M/de/base"]  # the untrained model: once
    pairs = {s.run.run_id: s.baseline.run_id for s in grid_stages(_grid(tmp_path, seeds=[0, 1, 2]))
             if s.kind == "pairwise"}
    assert pairs == {f"M/de/clo/nall/s{i}": f"M/de/sft/nall/s{i}" for i in range(3)}
    assert [r["seed"] for r in plan(_grid(tmp_path, seeds=[0, 1]))["runs"] if r["method"]] == [0, 1, 0, 1]
    assert [r.run_id for r in expand(_grid(tmp_path)) if r.method] == ["M/de/sft/nall", "M/de/clo/nall"]
    with pytest.raises(Exception, match="seeds must be distinct"):
        _grid(tmp_path, seeds=[1, 1])


def test_report_cells_are_mean_and_sd_over_seeds(tmp_path):
    grid = _grid(tmp_path, seeds=[0, 1, 2])
    write_json(tmp_path / "plan.json", plan(grid))
    for seed, (acc, wr, wins) in enumerate(((0.40, 0.55, 40), (0.44, 0.60, 44), (0.48, 0.65, 48))):
        put = lambda rid, key, m: write_json(  # noqa: E731
            tmp_path / "runs" / rid / "eval" / f"{key}.done.json", {"fingerprint": "0" * 16, "result": m})
        put(f"M/de/clo/nall/s{seed}", "belebele_de", {"accuracy": acc, "stderr": 0.016, "n": 900})
        put(f"M/de/clo/nall/s{seed}", "alpacaeval_de", {"win_rate": wr, "stderr": 0.02, "n": 80, "wins": wins,
                                                        "losses": 80 - wins, "ties": 0, "failures": 0})
    write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    t2 = md.split("### Table 2", 1)[1].split("\n### ", 1)[0]
    assert "mean ± SD over the seeds" in t2 and "seeds 0, 1, 2" in t2
    row = next(line for line in t2.splitlines() if line.startswith("| M | de | de |"))
    # mean 0.44; SD sqrt((0.04² + 0 + 0.04²) / 2) = 0.04
    assert "| 44.0 ± 4.0" in row
    t1 = md.split("### Table 1", 1)[1].split("\n### ", 1)[0]
    assert "| 60.0 ± 5.0" in next(line for line in t1.splitlines() if line.startswith("| M | de |"))
    runs = md.split("### Runs", 1)[1]
    assert "| M/de/clo/nall |" in runs and "| M/de/clo/nall/s1 |" in runs
