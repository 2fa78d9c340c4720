"""The report's captions name the judge prompt and system prompt the win rates were judged with."""

from __future__ import annotations

from pathlib import Path

from clo.experiments.config import grid_from_dict
from clo.experiments.grid import plan
from clo.experiments.stages import write_json_atomic
from clo.report import write_report


def _grid(tmp_path: Path, metrics: dict[str, dict]) -> Path:
    grid = grid_from_dict({"name": "g", "output_dir": str(tmp_path), "models": ["M"], "langs": ["de"],
                           "methods": ["sft", "clo"], "sizes": [200, None],
                           "eval_jobs": [{"task": "alpacaeval"}, {"task": "alpacaeval", "lang": "en"}]})
    write_json_atomic(tmp_path / "plan.json", plan(grid))
    for (run_id, key), m in metrics.items():
        write_json_atomic(tmp_path / "runs" / run_id / "eval" / f"{key}.done.json",
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
