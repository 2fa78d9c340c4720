"""Reports from finished runs: the paper's tables (Markdown, CSV), Figure 3 (PNG) and report.json.

    from clo.report import write_report
    write_report("runs/paper-de")          # -> runs/paper-de/report/{report.md, *.csv, *.png, report.json}
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

from clo.io import atomic_write
from clo.registry import Registry
from clo.report import beyond
from clo.report.tables import GAP, PAPER_TABLES, Cell, GridResults, Table, collect, not_shown

__all__ = ["GAP", "TABLES", "Cell", "GridResults", "Table", "build_tables", "collect", "not_shown", "write_report"]

#: Every report table, in report order: the paper's, then those of the study beyond it.
TABLES: Registry = Registry("report table", {**PAPER_TABLES, **beyond.TABLES})


def build_tables(res: GridResults, names: Iterable[str] | None = None) -> list[Table]:
    """The tables ``names`` (default: all) of ``res``; an unknown name says which ones exist."""
    return [TABLES.get(n)(res) for n in (names or TABLES)]


FIGURE = "figure3_winrate_vs_size.png"


def _drift_figures(grid_dir: Path, res, out: Path) -> list[str]:
    from clo.report.plots import drift_curves, plot_drift

    files = []
    for run_id, r in sorted(res.runs.items()):
        curves = drift_curves(grid_dir / "runs" / run_id / "train")
        if curves:
            name = f"drift_{run_id.replace('/', '_')}.png"
            plot_drift(curves, f"{run_id} ({r.info.get('method')}, {r.info.get('lang')})", out / name)
            files.append(name)
    return files


def write_report(grid_dir: str | Path, out_dir: str | Path | None = None) -> dict:
    """Write every table and the figure of ``grid_dir``; returns {files, runs: {status: count}, omitted}.

    A table with no result at all (every cell a gap) is left out, its CSV and figure too, and
    listed under "Not in this report" with why: planned but not finished, or not run by this grid
    and the command that runs it (``omitted``: ``[{name, title, why}]``, also in report.json)."""
    from clo.report.plots import plot_winrate_vs_size

    grid_dir = Path(grid_dir)
    out = Path(out_dir) if out_dir is not None else grid_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    res = collect(grid_dir)
    # A table whose every cell is a gap is left out, and listed once with why (and what runs it).
    tables, omitted = [], []
    for t in build_tables(res):
        why = not_shown(res, t)
        if why is None:
            tables.append(t)
        else:
            omitted.append({"name": t.name, "title": t.title, "why": why})
            (out / f"{t.name}.csv").unlink(missing_ok=True)  # from an earlier report into this directory
    files: list[str] = []
    for t in tables:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(t.csv_rows())
        atomic_write(out / f"{t.name}.csv", buf.getvalue())
        files.append(f"{t.name}.csv")
    fig_table = next((t for t in tables if t.name == "figure3_winrate_vs_size"), None)
    if fig_table is not None:
        plot_winrate_vs_size(fig_table, res, out / FIGURE)
        files.append(FIGURE)
    else:
        (out / FIGURE).unlink(missing_ok=True)  # from an earlier report of this directory
    drift = _drift_figures(grid_dir, res, out)
    files += drift
    status: dict[str, int] = {}
    for r in res.runs.values():
        status[r.status] = status.get(r.status, 0) + 1
    name = res.plan.get("name", grid_dir.name)
    md = [f"# Report: {name}", "",
          f"Grid directory `{grid_dir}`; runs: " + ", ".join(f"{n} {s}" for s, n in sorted(status.items())) + ".",
          f"A gap ({GAP}) is a run or evaluation that has not finished, never a zero.", ""]
    for t in tables:
        md.append(t.to_markdown())
        if t.name == "figure3_winrate_vs_size":
            md += [f"![Figure 3]({FIGURE})", ""]
    if omitted:
        md += ["## Not in this report", "",
               "Tables with no result at all are left out rather than shown as rows of gaps:", ""]
        md += [f"- {o['title']}: {o['why']}." for o in omitted] + [""]
    if drift:
        md += ["## Language drift during training", "",
               ("Greedy answers to held-out validation prompts at every validation step: the share in the "
               "prompt's language (among answers that do not echo the prompt) and the share that echo it."), ""]
        md += [f"![drift]({f})" for f in drift] + [""]
    atomic_write(out / "report.md", "\n".join(md))
    files.append("report.md")
    atomic_write(out / "report.json", json.dumps(
        {"name": name, "runs": status, "tables": [t.to_json() for t in tables], "omitted": omitted},
        indent=2, ensure_ascii=False))
    files.append("report.json")
    return {"dir": str(out), "files": files, "runs": status, "omitted": omitted}
