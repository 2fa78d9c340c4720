"""Figure 3: win rate against training-data size, one line per method, one panel per (model, lang)."""

from __future__ import annotations

from pathlib import Path

from clo.report.tables import GridResults, Table


def plot_winrate_vs_size(table: Table, res: GridResults, path: Path) -> Path:
    """Write the PNG of :func:`clo.report.tables.winrate_vs_size`'s table; missing points are left out."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    cells = res.cells() or [("—", "—")]
    fig, axes = plt.subplots(1, len(cells), figsize=(4.5 * len(cells), 3.6), squeeze=False)
    # "all" (the whole split) sits right of the largest numbered size.
    numbered = [s for s in res.sizes if s is not None]
    x_of = {str(s): float(s) for s in numbered}
    x_of["all"] = (max(numbered) * 2.0) if numbered else 1.0
    for ax, (model, lang) in zip(axes[0], cells):
        rows = [(keys, c) for keys, c in table.rows if keys[0] == model and keys[1] == lang]
        plotted = 0
        for j, column in enumerate(table.columns):
            pts = [(x_of[keys[2]], c[j].value * 100, (c[j].se or 0.0) * 100)
                   for keys, c in rows if c[j].value is not None]
            if not pts:
                continue
            pts.sort()
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=column)
            plotted += 1
        ax.axhline(50.0, color="grey", lw=0.8, ls="--")
        if numbered:
            ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(x_of.values()), [k for k, _ in sorted(x_of.items(), key=lambda kv: kv[1])])
        ax.set_xlabel("training examples")
        ax.set_ylabel("win rate (%)")
        ax.set_title(f"{model} · {lang}")
        if plotted:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no win rates yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
