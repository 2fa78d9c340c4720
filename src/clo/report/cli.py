"""``clo report GRID_DIR``: the paper's tables and Figure 3 from a grid's stored metrics."""

from __future__ import annotations

import argparse

HELP = "the paper's tables (Markdown, CSV) and Figure 3 (PNG) from finished runs of a grid"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clo.cli import add_output_argument

    parser.add_argument("grid_dir", metavar="GRID_DIR", help="a grid directory written by `clo run` (its output_dir)")
    add_output_argument(parser, "where to write (default GRID_DIR/report)")
    parser.add_argument("--print", dest="show", action="store_true", help="print report.md")


def main(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from clo.report import write_report

    try:
        out = write_report(args.grid_dir, args.output)
    except (FileNotFoundError, ValueError) as e:  # not a grid directory, or a damaged file in it
        print(f"clo report: {e}", file=sys.stderr)
        return 2
    runs = ", ".join(f"{n} {s}" for s, n in sorted(out["runs"].items()))
    print(f"report: {out['dir']}/report.md ({runs})")
    if args.show:
        print((Path(out["dir"]) / "report.md").read_text(encoding="utf-8"))
    return 0
