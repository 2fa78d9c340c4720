"""Figure 3: win rate against training-data size, one line per method, one panel per (model, lang)."""

from __future__ import annotations

from pathlib import Path

from clo.report.tables import GridResults, Table

# Lines of one panel often coincide (two methods at the same win rate, a language share and an
# echo share both at 0 %): each gets its own marker and line style, so a line hidden under
# another still shows its markers, and the figure reads in greyscale.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINESTYLES = ("-", "--", "-.", ":")


def line_style(i: int) -> dict:
    """The ``i``-th line's marker, line style and marker fill (hollow every other one)."""
    return {"marker": _MARKERS[i % len(_MARKERS)], "ls": _LINESTYLES[i % len(_LINESTYLES)],
            "mfc": "none" if i % 2 else None}


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
            ax.errorbar(xs, ys, yerr=es, capsize=3, label=column, **line_style(j))
            plotted += 1
        # 50 %: as good as the baseline; against the baseline at its largest size (the paper's
        # "SFT assumed" line), that run itself.
        ref = (f"{res.baseline.upper()} at {'all' if res.main_size is None else res.main_size}"
               if res.plan.get("baseline_size") == "largest" else None)
        ax.axhline(50.0, color="grey", lw=0.8, ls="--", label=ref)
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


DRIFT_SERIES = (("tgt_lang_share", "target prompts: answers in the target language"),
                ("en_lang_share", "English prompts: answers in English"),
                ("tgt_echo_share", "target prompts: echoes"), ("en_echo_share", "English prompts: echoes"))


def drift_curves(train_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{series: [(step, share)]}`` from the ``drift/*`` entries of every ``log.jsonl`` under
    ``train_dir`` (``sft+dpo`` has one per stage; the second stage's steps follow the first's)."""
    from clo.train.tracking import read_log

    curves: dict[str, list[tuple[int, float]]] = {}
    offset = 0
    for log_path in sorted(Path(train_dir).rglob("log.jsonl"), key=lambda p: (len(p.parts), str(p))):
        last = 0
        for _, row in read_log(log_path):
            last = max(last, int(row.get("step", 0)))
            for key, _ in DRIFT_SERIES:
                v = row.get(f"drift/{key}")
                if v is not None:
                    curves.setdefault(key, []).append((offset + int(row["step"]), float(v)))
        offset += last
    return curves


def drift_figure(curves: dict[str, list[tuple[int, float]]], title: str):
    """The matplotlib figure of :func:`plot_drift`: steps on an integer axis from 0 (the untrained
    model's point, which the trainer measures before its first step), one marker and line style
    per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    last = 0
    for i, (key, label) in enumerate(DRIFT_SERIES):
        pts = curves.get(key)
        if pts:
            xs, ys = zip(*sorted(pts))
            last = max(last, xs[-1])
            ax.plot(xs, [y * 100 for y in ys], ms=5, label=label, **line_style(i))
    ax.set_ylim(-3, 103)
    ax.set_xlim(-0.02 * max(last, 1), max(last, 1) * 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("training step")
    ax.set_ylabel("share of greedy answers (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_drift(curves: dict[str, list[tuple[int, float]]], title: str, path: Path) -> Path:
    """One run's language and echo shares against the training step (PNG)."""
    import matplotlib.pyplot as plt

    fig = drift_figure(curves, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
