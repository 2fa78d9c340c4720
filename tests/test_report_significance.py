"""Paired significance in the report: sign tests on judged items, exact McNemar on accuracies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from clo.experiments.config import grid_from_dict
from clo.experiments.graph import plan
from clo.io import write_json
from clo.report import write_report
from clo.report.tables import sign_test_p


def test_sign_test_by_hand():
    # 7 wins, 1 loss: 2 * (C(8,0) + C(8,1)) / 2^8 = 18/256
    assert sign_test_p(7, 1) == pytest.approx(18 / 256)
    assert sign_test_p(1, 7) == pytest.approx(18 / 256)
    assert sign_test_p(5, 0) == pytest.approx(2 / 32)  # McNemar with 5 discordant items, all one way
    assert sign_test_p(3, 3) == 1.0 and sign_test_p(0, 0) is None
    # against scipy's exact binomial test
    from scipy.stats import binomtest

    for w, l in ((12, 4), (30, 41), (0, 9)):
        assert sign_test_p(w, l) == pytest.approx(binomtest(w, w + l, 0.5).pvalue)


def _put(d: Path, run_id: str, key: str, metrics: dict, records: list[dict]) -> None:
    write_json(d / "runs" / run_id / "eval" / f"{key}.done.json", {"fingerprint": "0" * 16, "result": metrics})
    task, _, lang = key.rpartition("_")
    p = d / "runs" / run_id / "eval" / key / f"{task}-{lang}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"metrics": metrics, "records": records}), encoding="utf-8")


def test_significance_table(tmp_path):
    grid = grid_from_dict({"name": "g", "output_dir": str(tmp_path), "models": ["M"], "langs": ["de"],
                           "methods": ["sft", "sft+dpo", "clo"], "sizes": [None],
                           "eval_jobs": [{"task": "alpacaeval"}, {"task": "belebele"}]})
    write_json(tmp_path / "plan.json", plan(grid))
    # CLO against SFT: 7 wins, 1 loss, 2 ties on 10 items; SFT+DPO: 4 wins, 4 losses, 2 ties
    clo = [1, 1, 1, 1, 1, 1, 1, 0, 0.5, 0.5]
    dpo = [1, 0, 1, 0, 1, 0, 1, 0, 0.5, 0.5]
    for run_id, sc in (("M/de/clo/nall", clo), ("M/de/sft+dpo/nall", dpo)):
        wr = sum(sc) / len(sc)
        se = math.sqrt(sum((x - wr) ** 2 for x in sc) / (len(sc) - 1) / len(sc))
        _put(tmp_path, run_id, "alpacaeval_de", {"win_rate": wr, "stderr": se, "n": 10},
             [{"id": str(i), "score": x} for i, x in enumerate(sc)])
    # BELEBELE: CLO right where SFT is wrong on 5 items, never the reverse
    sft_c = [1, 1, 0, 0, 0, 0, 0, 1]
    clo_c = [1, 1, 1, 1, 1, 1, 1, 1]
    for run_id, cs in (("M/de/sft/nall", sft_c), ("M/de/clo/nall", clo_c)):
        _put(tmp_path, run_id, "belebele_de", {"accuracy": sum(cs) / 8, "stderr": 0.1, "n": 8},
             [{"id": str(i), "correct": bool(c)} for i, c in enumerate(cs)])
    write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    block = md.split("### Significance of the differences (same items)", 1)[1].split("\n### ", 1)[0]
    assert "exact two-sided sign test" in block and "exact McNemar test" in block
    rows = [line for line in block.splitlines() if line.startswith("| M |")]
    se_clo = math.sqrt(sum((x - 0.8) ** 2 for x in clo) / 9 / 10)  # the win rate is 0.8
    lo, hi = 100 * (0.3 - 1.959963984540054 * se_clo), 100 * (0.3 + 1.959963984540054 * se_clo)
    assert f"| M | de | alpacaeval_de | CLO vs SFT | 30.0 | [{lo:.1f}, {hi:.1f}] | 7 vs 1 of 10 | 0.070 |" in rows
    assert any(r.startswith("| M | de | alpacaeval_de | SFT+DPO vs SFT | 0.0 |") and r.endswith("| 4 vs 4 of 10 | 1.000 |")
               for r in rows)
    # CLO − SFT+DPO item by item: +1 on items 1, 3, 5 (0 elsewhere): mean 0.3, differs on 3 items
    d = [c - p for c, p in zip(clo, dpo)]
    m = sum(d) / 10
    se = math.sqrt(sum((x - m) ** 2 for x in d) / 9 / 10)
    assert (f"| M | de | alpacaeval_de | CLO − SFT+DPO | 30.0 | [{100 * (m - 1.959963984540054 * se):.1f}, "
            f"{100 * (m + 1.959963984540054 * se):.1f}] | 3 vs 0 of 10 | 0.250 |") in rows
    # accuracy: 5 discordant items, all for CLO: McNemar p = 2/32
    assert any(r.startswith("| M | de | belebele_de | CLO − SFT | 62.5 |") and r.endswith("| 5 vs 0 of 8 | 0.062 |")
               for r in rows)


def test_figure4_mmmlu_by_category(tmp_path):
    grid = grid_from_dict({"name": "g", "output_dir": str(tmp_path), "models": ["M"], "langs": ["ko"],
                           "methods": ["sft", "clo"], "sizes": [None], "include_base": False,
                           "eval_jobs": [{"task": "mmmlu"}]})
    write_json(tmp_path / "plan.json", plan(grid))
    per = {"sft": {"STEM": (0.30, 0.02), "humanities": (0.41, 0.03)},
           "clo": {"STEM": (0.35, 0.02), "humanities": (0.44, 0.03), "other": (0.5, 0.04)}}
    for v, cats in per.items():
        write_json(tmp_path / "runs" / f"M/ko/{v}/nall" / "eval" / "mmmlu_ko.done.json", {
            "fingerprint": "0" * 16, "result": {"accuracy": 0.4, "stderr": 0.01, "n": 100, "per_category": {
                c: {"accuracy": a, "stderr": s, "n": 20} for c, (a, s) in cats.items()}}})
    write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    block = md.split("### Figure 4: MMMLU accuracy (%) by subject category", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("| M |")]
    assert [r.split(" | ")[2] for r in rows] == ["STEM", "humanities", "other"]
    assert rows[0].startswith("| M | ko | STEM | 30.0 ± 2.0") and "35.0 ± 2.0" in rows[0]
    assert rows[2].startswith("| M | ko | other | — |") and "50.0 ± 4.0" in rows[2]
    assert "MMLU's four (Hendrycks et al., 2021)" in block


def test_table4_head_to_head(tmp_path):
    root = Path(__file__).resolve().parents[1]
    from clo.experiments.config import load_grid

    preset = load_grid(root / "configs" / "table4.yaml")
    assert (preset.baseline, [m.name for m in preset.methods], preset.langs) == ("clo", ["clo", "clo-full"],
                                                                                ["zh", "ko", "sw"])
    grid = grid_from_dict({"name": "g", "output_dir": str(tmp_path), "models": ["M"], "langs": ["ko"],
                           "methods": ["clo", {"name": "clo-full", "method": "clo", "set": {"train.trainable": "full"}}],
                           "sizes": [None], "include_base": False, "baseline": "clo",
                           "eval_jobs": [{"task": "alpacaeval"}, {"task": "alpacaeval", "lang": "en"}]})
    p = plan(grid)
    write_json(tmp_path / "plan.json", p)
    # the grid judges clo-full against clo (and not clo against itself)
    assert [r["evals"] for r in p["runs"] if r["variant"] == "clo"] == [[]]
    write_json(tmp_path / "runs" / "M/ko/clo-full/nall" / "eval" / "alpacaeval_ko.done.json", {
        "fingerprint": "0" * 16, "result": {"win_rate": 0.4, "stderr": 0.05, "n": 80, "wins": 28, "losses": 44,
                                            "ties": 8, "failures": 0}})
    write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    block = md.split("### Table 4 (head to head): CLO variants against clo", 1)[1].split("\n### ", 1)[0]
    assert "| model | lang | clo-full win tgt | clo-full lose tgt | clo-full win en | clo-full lose en |" in block
    assert "| M | ko | 35.0 | 55.0 | — | — |" in block  # 28/80 and 44/80


def test_table3_rows_of_variants_evaluated_on_mmmlu_only(tmp_path):
    grid = grid_from_dict({"name": "g", "output_dir": str(tmp_path), "models": ["M"], "langs": ["ko", "de"],
                           "methods": ["sft", "clo", {"name": "sft-eng", "method": "sft-eng", "tasks": ["mmmlu"],
                                                      "only_langs": ["ko"]}],
                           "sizes": [None], "include_base": False,
                           "eval_jobs": [{"task": "mmmlu"}, {"task": "mmmlu", "lang": "en"}, {"task": "belebele"},
                                         {"task": "alpacaeval"}]})
    p = plan(grid)
    assert [r["run_id"] for r in p["runs"] if r["variant"] == "sft-eng"] == ["M/ko/sft-eng/nall"]
    assert next(r for r in p["runs"] if r["variant"] == "sft-eng")["evals"] == ["mmmlu_ko", "mmmlu_en"]
    write_json(tmp_path / "plan.json", p)
    for v, acc in (("sft", 0.30), ("clo", 0.36), ("sft-eng", 0.28)):
        write_json(tmp_path / "runs" / f"M/ko/{v}/nall" / "eval" / "mmmlu_ko.done.json",
                   {"fingerprint": "0" * 16, "result": {"accuracy": acc, "stderr": 0.01, "n": 100}})
    write_json(tmp_path / "runs" / "M/ko/clo/nall" / "eval" / "belebele_ko.done.json",
               {"fingerprint": "0" * 16, "result": {"accuracy": 0.5, "stderr": 0.01, "n": 900}})
    write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "| model | lang | eval lang | SFT | CLO | SFT-eng |" in md.split("### Table 3", 1)[1]
    assert "| model | lang | eval lang | SFT | CLO |\n" in md.split("### Table 2", 1)[1]


def test_ablations_are_tested_against_the_main_clo(tmp_path):
    grid = grid_from_dict({"name": "g", "output_dir": str(tmp_path), "models": ["M"], "langs": ["de"],
                           "methods": ["sft", "clo", {"name": "clo-full", "method": "clo",
                                                      "set": {"train.trainable": "full"}}],
                           "sizes": [None], "include_base": False, "eval_jobs": [{"task": "belebele"}]})
    write_json(tmp_path / "plan.json", plan(grid))
    for run_id, cs in (("M/de/sft/nall", [0, 0, 0, 0, 1, 1]), ("M/de/clo/nall", [1, 1, 0, 0, 1, 1]),
                       ("M/de/clo-full/nall", [1, 1, 1, 1, 1, 0])):
        _put(tmp_path, run_id, "belebele_de", {"accuracy": sum(cs) / 6, "stderr": 0.1, "n": 6},
             [{"id": str(i), "correct": bool(c)} for i, c in enumerate(cs)])
    write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    rows = [line for line in md.split("### Significance", 1)[1].split("\n### ", 1)[0].splitlines()
            if line.startswith("| M |")]
    # clo-full − clo: +1 on items 2, 3, −1 on item 5: mean 1/6, 2 vs 1 discordant, p = 1.0
    assert any(r.startswith("| M | de | belebele_de | clo-full − CLO | 16.7 |") and r.endswith("| 2 vs 1 of 6 | 1.000 |")
               for r in rows)
    # clo-full − SFT: 4 vs 1 discordant (items 0-3 for, item 5 against): 2 * (1 + 5) / 32
    assert any(r.startswith("| M | de | belebele_de | clo-full − SFT |") and r.endswith("| 4 vs 1 of 6 | 0.375 |")
               for r in rows)
