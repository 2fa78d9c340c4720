"""Report rendering from stored metrics (no models): exact cells, gaps for what is missing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from clo.experiments.config import grid_from_dict
from clo.experiments.grid import plan
from clo.io import write_json
from clo.report import GAP, write_report


def _table(md: str, title: str) -> list[str]:
    """The row lines of the Markdown table under ``### <title>``."""
    block = md.split(f"### {title}", 1)[1].split("\n### ", 1)[0]
    return [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| model")
            and not line.startswith("| run |")]


@pytest.fixture
def grid_dir(tmp_path: Path) -> Path:
    grid = grid_from_dict({
        "name": "stored", "output_dir": str(tmp_path),
        "models": ["M"], "langs": ["de"],
        "methods": ["sft", "sft+dpo", "clo",
                    {"name": "clo-full", "method": "clo", "set": {"train.trainable": "full"}},
                    {"name": "clo-both", "method": "clo", "set": {"train.nll_langs": ["tgt", "en"]}}],
        "sizes": [200, None],
        "eval_jobs": [{"task": "belebele"}, {"task": "belebele", "lang": "en"}, {"task": "alpacaeval"},
                      {"task": "alpacaeval", "lang": "en"}, {"task": "fidelity"}],
    })
    write_json(tmp_path / "plan.json", plan(grid))

    def put(run_id: str, key: str, metrics: dict) -> None:
        write_json(tmp_path / "runs" / run_id / "eval" / f"{key}.done.json",
                   {"fingerprint": "0" * 16, "result": metrics})

    put("M/de/base", "belebele_de", {"accuracy": 0.30, "stderr": 0.015, "n": 900})
    put("M/de/base", "fidelity_de", {"rate": 0.2, "n": 100})
    put("M/de/sft/nall", "belebele_de", {"accuracy": 0.35, "stderr": 0.016, "n": 900})
    put("M/de/sft/nall", "fidelity_de", {"rate": 0.5, "n": 100})
    put("M/de/clo/nall", "belebele_de", {"accuracy": 0.40, "stderr": 0.0163, "n": 900})
    put("M/de/clo/nall", "belebele_en", {"accuracy": 0.45, "stderr": 0.0166, "n": 900})
    put("M/de/clo/nall", "alpacaeval_de", {"win_rate": 0.62, "stderr": 0.017, "n": 805})
    put("M/de/clo/nall", "alpacaeval_en", {"win_rate": 0.55, "stderr": 0.02, "n": 805})
    put("M/de/clo/nall", "fidelity_de", {"rate": 0.9, "n": 100})
    put("M/de/clo/n200", "alpacaeval_de", {"win_rate": 0.52, "stderr": 0.03, "n": 805})
    # sft+dpo: only its English win rate finished; clo-full (size all) never ran at all.
    put("M/de/sft+dpo/nall", "alpacaeval_en", {"win_rate": 0.51, "stderr": 0.02, "n": 805})
    put("M/de/clo-full/n200", "belebele_de", {"accuracy": 0.25, "stderr": 0.0144, "n": 900})
    put("M/de/clo-both/nall", "belebele_de", {"accuracy": 0.41, "stderr": 0.0164, "n": 900})
    write_json(tmp_path / "runs" / "M/de/sft/n200" / "failed.json", {"error": "RuntimeError: out of memory"})
    return tmp_path


def test_report_tables_from_stored_metrics_with_gaps(grid_dir):
    out = write_report(grid_dir)
    rdir = grid_dir / "report"
    # No MMMLU, preference or sample prompts in this grid: those tables are left out, not shown as gaps.
    assert sorted(out["files"]) == sorted([
        "table1_winrates.csv", "table2_belebele.csv", "table4_trainable.csv",
        "table5_nll_langs.csv", "fidelity.csv", "figure3_winrate_vs_size.csv", "runs.csv",
        "figure3_winrate_vs_size.png", "report.md", "report.json"])
    assert [o["name"] for o in out["omitted"]] == ["table3_mmmlu", "figure4_mmmlu_categories",
                                                  "table4_head_to_head", "table9_judge_prompts", "preference",
                                                  "samples", "significance",
                                                  "beyond_cl_losses", "beyond_multilingual"]
    md = (rdir / "report.md").read_text(encoding="utf-8")

    # Table 1: CLO and SFT+DPO against SFT; Δ = CLO − SFT+DPO = 55 − 51 = 4.0 points in English,
    # a gap in German where SFT+DPO has no result.
    assert "| model | lang | SFT+DPO tgt | CLO tgt | Δ tgt | SFT+DPO en | CLO en | Δ en |" in md
    assert _table(md, "Table 1") == [f"| M | de | {GAP} | 62.0 ± 1.7 (n=805) | {GAP} | 51.0 ± 2.0 (n=805) | 55.0 ± 2.0 (n=805) | 4.0 |"]
    # Table 2: main variants only (no ablations), target and English rows.
    assert "| model | lang | eval lang | Base | SFT | SFT+DPO | CLO |" in md
    assert _table(md, "Table 2") == [
        f"| M | de | de | 30.0 ± 1.5 (n=900) | 35.0 ± 1.6 (n=900) | {GAP} | 40.0 ± 1.6 (n=900) |",
        f"| M | de | en | {GAP} | {GAP} | {GAP} | 45.0 ± 1.7 (n=900) |",
    ]
    # Listed once, with the command that runs it; never a table of gaps.
    assert "### Table 3" not in md
    assert md.count("Table 3: MMMLU accuracy") == 1
    assert ("- Table 3: MMMLU accuracy (%): not run by this grid; `clo run configs/paper.yaml` "
            "(eval job `{task: mmmlu}`).") in md.split("## Not in this report", 1)[1]
    # Table 4 at the main size (all): clo-full never ran.
    assert "| model | lang | metric | attention (clo) | full (clo-full) |" in md
    assert f"| M | de | BELEBELE (de) | 40.0 ± 1.6 (n=900) | {GAP} |" in _table(md, "Table 4")
    assert "| model | lang | metric | NLL tgt (clo) | NLL tgt+en (clo-both) |" in md
    assert "| M | de | BELEBELE (de) | 40.0 ± 1.6 (n=900) | 41.0 ± 1.6 (n=900) |" in _table(md, "Table 5")
    # Fidelity: the standard error is the binomial one, sqrt(p(1-p)/n): 0.2 -> 4.0, 0.5 -> 5.0, 0.9 -> 3.0.
    assert _table(md, "Language fidelity") == [f"| M | de | response rate (de) | 20.0 ± 4.0 (n=100) | 50.0 ± 5.0 (n=100) | {GAP} | 90.0 ± 3.0 (n=100) |"]
    # Figure 3 data: one row per size, every compared variant.
    assert _table(md, "Figure 3") == [
        f"| M | de | 200 | {GAP} | 52.0 ± 3.0 (n=805) | {GAP} | {GAP} |",
        f"| M | de | all | {GAP} | 62.0 ± 1.7 (n=805) | {GAP} | {GAP} |",
    ]
    runs = {line.split(" | ")[0][2:]: line for line in _table(md, "Runs")}
    assert runs["M/de/sft/n200"] == f"| M/de/sft/n200 | failed | {GAP} | 0/3 | RuntimeError: out of memory |"
    assert runs["M/de/clo-full/nall"] == f"| M/de/clo-full/nall | missing | {GAP} | 0/5 |  |"
    assert runs["M/de/sft+dpo/nall"] == f"| M/de/sft+dpo/nall | partial | {GAP} | 1/5 |  |"
    assert "runs: 1 done, 1 failed, 3 missing, 6 partial." in md

    # CSV: numbers in %, standard errors in their own column, gaps empty (never 0).
    rows = list(csv.reader((rdir / "table1_winrates.csv").open(encoding="utf-8")))
    assert rows[0] == ["model", "lang", "SFT+DPO tgt", "SFT+DPO tgt_se", "CLO tgt", "CLO tgt_se", "Δ tgt", "Δ tgt_se",
                       "SFT+DPO en", "SFT+DPO en_se", "CLO en", "CLO en_se", "Δ en", "Δ en_se"]
    assert rows[1] == ["M", "de", "", "", "62.0000", "1.7000", "", "", "51.0000", "2.0000", "55.0000", "2.0000",
                       "4.0000", ""]
    assert (rdir / "figure3_winrate_vs_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((rdir / "report.json").read_text(encoding="utf-8"))
    assert doc["runs"] == {"done": 1, "failed": 1, "missing": 3, "partial": 6}
    t1 = next(t for t in doc["tables"] if t["name"] == "table1_winrates")
    assert t1["rows"][0]["cells"][0] == {"value": None, "se": None, "text": None}


def test_report_reads_evaluation_files_written_outside_a_grid(grid_dir):
    # An evaluation run by `clo eval` into the run directory (no done-marker) is picked up too.
    d = grid_dir / "runs" / "M/de/sft+dpo/nall" / "eval" / "belebele_de"
    d.mkdir(parents=True)
    (d / "belebele-de.json").write_text(json.dumps({"task": "belebele", "metrics": {"accuracy": 0.375, "stderr": 0.01}}))
    md = (Path(write_report(grid_dir)["dir"]) / "report.md").read_text(encoding="utf-8")
    assert _table(md, "Table 2")[0] == "| M | de | de | 30.0 ± 1.5 (n=900) | 35.0 ± 1.6 (n=900) | 37.5 ± 1.0 | 40.0 ± 1.6 (n=900) |"


def test_report_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no plan.json"):
        write_report(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps({"runs": [{"run_id": "a"}]}))
    with pytest.raises(ValueError, match=r"plan.json: runs\[0\]: field 'model' missing"):
        write_report(tmp_path)


def test_report_command_line(grid_dir, capsys):
    from clo.cli import main

    assert main(["report", str(grid_dir), "--out", str(grid_dir / "elsewhere")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"report: {grid_dir / 'elsewhere'}/report.md (1 done, 1 failed, 3 missing, 6 partial)")
    assert (grid_dir / "elsewhere" / "table2_belebele.csv").is_file()
    assert main(["report", str(grid_dir / "nope")]) == 2
    assert "no plan.json; is this a grid directory written by `clo run`?" in capsys.readouterr().err


def _demo_like(tmp_path: Path, jobs: list[dict]) -> Path:
    grid = grid_from_dict({"name": "small", "output_dir": str(tmp_path), "models": ["M"], "langs": ["de"],
                           "methods": ["sft", "clo"], "sizes": [None], "eval_jobs": jobs})
    write_json(tmp_path / "plan.json", plan(grid))
    return tmp_path


def _put_result(grid: Path, run_id: str, key: str, metrics: dict, records: list[dict] | None = None) -> None:
    write_json(grid / "runs" / run_id / "eval" / f"{key}.done.json", {"fingerprint": "0", "result": metrics})
    if records is not None:
        task, _, lang = key.rpartition("_")
        write_json(grid / "runs" / run_id / "eval" / key / f"{task}-{lang}.json",
                   {"task": task, "metrics": metrics, "records": records})


def test_report_leaves_out_tables_of_gaps_and_lists_them_once(tmp_path):
    grid = _demo_like(tmp_path, [{"task": "fidelity"}, {"task": "belebele"}])
    _put_result(grid, "M/de/clo/nall", "fidelity_de", {"rate": 0.5, "n": 4, "echo_rate": 0.25,
                                                        "rate_excluding_echoes": 1 / 3, "n_excluding_echoes": 3})
    (grid / "report").mkdir()
    (grid / "report" / "figure3_winrate_vs_size.png").write_bytes(b"stale")
    out = write_report(grid)
    md = (grid / "report" / "report.md").read_text(encoding="utf-8")
    omitted = {o["name"]: o["why"] for o in out["omitted"]}
    # No judge, one size, one CLO variant: Table 1, Figure 3 and both ablations are not run here;
    # BELEBELE is planned but has no result yet.
    assert set(omitted) == {"table1_winrates", "table2_belebele", "table3_mmmlu", "figure4_mmmlu_categories",
                            "table4_trainable", "table4_head_to_head", "table9_judge_prompts",
                            "table5_nll_langs", "preference", "figure3_winrate_vs_size", "samples",
                            "significance", "beyond_cl_losses", "beyond_multilingual"}
    assert omitted["table2_belebele"] == "planned in this grid, no result yet (see Runs)"
    assert "configs/ablations.yaml" in omitted["table4_trainable"] and "configs/sizes.yaml" in omitted[
        "figure3_winrate_vs_size"]
    assert "judge" in omitted["table1_winrates"] and "configs/paper.yaml" in omitted["table1_winrates"]
    for name in omitted:
        assert not (grid / "report" / f"{name}.csv").exists()
    assert not (grid / "report" / "figure3_winrate_vs_size.png").exists() and "![Figure 3]" not in md
    head, tail = md.split("## Not in this report", 1)
    assert "### Table" not in head and "### Figure" not in head and "### Language preference" not in head
    assert tail.count("\n- ") == len(omitted)
    # The echo rows of the fidelity table: binomial SEs, the second on the 3 answers that are no echo.
    assert _table(md, "Language fidelity") == [
        f"| M | de | response rate (de) | {GAP} | {GAP} | 50.0 ± 25.0 (n=4) |",
        f"| M | de | echoes (de) | {GAP} | {GAP} | 25.0 ± 21.7 (n=4) |",
        f"| M | de | response rate, echoes excluded (de) | {GAP} | {GAP} | 33.3 ± 27.2 (n=3) |",
    ]
    doc = json.loads((grid / "report" / "report.json").read_text(encoding="utf-8"))
    assert [o["name"] for o in doc["omitted"]] == [o["name"] for o in out["omitted"]]


def _pref_records(tgt: list[int], nll: list[float]) -> list[dict]:
    return [{"id": f"r{i}", "tgt_preferred": bool(t), "en_preferred": True, "margin_tgt": 0.0, "margin_en": 0.0,
             "nll_tgt": x, "nll_en": 1.0} for i, (t, x) in enumerate(zip(tgt, nll))]


def _pref_metrics(recs: list[dict]) -> dict:
    from clo.eval.preference import summarize

    return summarize(recs)


def test_preference_table_with_paired_differences(tmp_path):
    grid = _demo_like(tmp_path, [{"task": "preference"}])
    runs = {"M/de/base": ([0, 0, 1, 0], [3.0, 2.0, 4.0, 3.0]), "M/de/sft/nall": ([1, 0, 1, 0], [2.0, 2.0, 3.0, 2.0]),
            "M/de/clo/nall": ([1, 1, 1, 0], [2.5, 1.0, 3.0, 2.5])}
    for rid, (t, x) in runs.items():
        recs = _pref_records(t, x)
        _put_result(grid, rid, "preference_de", _pref_metrics(recs), recs)
    md = (Path(write_report(grid)["dir"]) / "report.md").read_text(encoding="utf-8")
    assert ("| model | lang | metric | Base | SFT | CLO | CLO − SFT | SFT − Base | CLO − Base |") in md
    rows = {line.split(" | ")[2]: line for line in _table(md, "Language preference")}
    # Shares: base 25, SFT 50, CLO 75 (SE of the 0/1 values, ddof 1). CLO − SFT: d = (0, 1, 0, 0),
    # mean 25 points, SE sqrt(0.25 / 4) = 25; SFT − base: d = (1, 0, 0, 0): the same; CLO − base:
    # d = (1, 1, 0, 0): 50 ± sqrt(1/3) / 2 = 28.9.
    assert rows["de answer preferred, de prompt (%)"] == (
        "| M | de | de answer preferred, de prompt (%) | 25.0 ± 25.0 (n=4) | 50.0 ± 28.9 (n=4) | 75.0 ± 25.0 (n=4) "
        "| 25.0 ± 25.0 (n=4) | 25.0 ± 25.0 (n=4) | 50.0 ± 28.9 (n=4) |")
    # NLL, nats per token, not scaled: CLO − SFT d = (0.5, -1, 0, 0.5): mean 0, SE sqrt(1.5 / 3 / 4) = 0.354;
    # SFT − base d = (-1, 0, -1, -1): -0.75 ± sqrt(0.75 / 3 / 4) = 0.25; CLO − base d = (-0.5, -1, -1, -0.5):
    # -0.75 ± sqrt(0.25 / 3 / 4) = 0.144.
    assert rows["NLL of the de answer to the de prompt (nats/token)"].endswith(
        "| 0.000 ± 0.354 (n=4) | -0.750 ± 0.250 (n=4) | -0.750 ± 0.144 (n=4) |")
    assert rows["NLL of the en answer to the en prompt (nats/token)"].endswith(
        "| 1.000 ± 0.000 (n=4) | 0.000 ± 0.000 (n=4) | 0.000 ± 0.000 (n=4) | 0.000 ± 0.000 (n=4) |")
    csv_rows = list(csv.reader((tmp_path / "report" / "preference.csv").open(encoding="utf-8")))
    nll = next(r for r in csv_rows if r[2].startswith("NLL of the de"))
    assert nll[3:5] == ["3.0000", "0.4082"]  # base: mean 3, SE sqrt(2/3 / 4); plain numbers, never in %


def test_tables_are_one_registry_in_report_order_and_a_misspelt_name_is_answered():
    from clo.registry import UnknownName
    from clo.report import TABLES, build_tables
    from clo.report.beyond import TABLES as BEYOND

    names = TABLES.names()
    assert names[0] == "table1_winrates" and names[-len(BEYOND):] == list(BEYOND)
    with pytest.raises(UnknownName, match=r"unknown report table 'tabel2_belebele'; did you mean 'table2_belebele'\?"):
        build_tables(None, ["tabel2_belebele"])
