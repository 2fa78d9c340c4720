"""Tables of the study beyond the paper (configs/beyond.yaml): CLO with each ``train.cl_loss``,
and runs on several target languages at once beside the one-language runs.

- ``beyond_cl_losses``: every CLO variant (one column each, named with its ``cl_loss``), per model
  and language (a multilingual entry ``sw+yo`` shows each of its languages), the evaluation
  numbers in the target language(s) and English. Shown when the variants differ in ``cl_loss``.
- ``beyond_multilingual``: per model, variant and multilingual entry, each of its languages'
  numbers from the one-language run (``runs/<model>/<lang>/...``), from the multilingual run
  (``runs/<model>/sw+yo/...``, evaluated per language) and their difference in points.

Both read only what :func:`clo.report.tables.collect` gathers (and each run's ``config.yaml``
for its ``cl_loss``); every missing number is a gap.
"""

from __future__ import annotations

import yaml

from clo.report.tables import Cell, GridResults, Table

#: (task, metric, row label) of the numbers both tables compare.
METRICS = (("belebele", "accuracy", "BELEBELE"), ("mmmlu", "accuracy", "MMMLU"),
           ("fidelity", "rate", "response in language"), ("alpacaeval", "win_rate", "win rate"))


def _cl_loss(res: GridResults, run_id: str) -> str | None:
    path = res.grid_dir / "runs" / run_id / "config.yaml"
    try:
        return ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("train") or {}).get("cl_loss")
    except (OSError, yaml.YAMLError, AttributeError):
        return None


def _clo_variants(res: GridResults) -> dict[str, str]:
    """CLO variant -> its ``cl_loss`` (from the first of its runs with a config), plan order."""
    out: dict[str, str] = {}
    for r in res.runs.values():
        if r.info.get("method") == "clo" and r.info["variant"] not in out:
            out[r.info["variant"]] = _cl_loss(res, r.info["run_id"]) or "sigmoid"
    return out


def _metric_rows(res: GridResults, langs: list[str]) -> list[tuple[str, str, str]]:
    """(row label, eval key, metric) for the target languages ``langs`` and English."""
    out = []
    for task, metric, label in METRICS:
        for key in res.eval_keys(task):
            el = key.rsplit("_", 1)[1]
            if el in langs or el == "en":
                out.append((f"{label} ({el})", key, metric))
    return out


def _empty(cells: list[Cell]) -> bool:
    return all(c.missing for c in cells)


def beyond_cl_losses(res: GridResults) -> Table:
    variants = _clo_variants(res)
    if len(set(variants.values())) < 2:
        variants = {}  # nothing to compare: the table is left out
    t = Table("beyond_cl_losses", "Beyond the paper: CLO with each cross-lingual loss (train.cl_loss)",
              ["model", "lang", "metric"], [f"{v} ({loss})" for v, loss in variants.items()],
              note="% ± one standard error; a multilingual run (lang a+b) is evaluated in each of its languages.")
    for model, lang in res.cells():
        for label, key, metric in _metric_rows(res, lang.split("+")):
            cells = []
            for v in variants:
                r = res.find(model, lang, v)
                cells.append(r.cell(key, metric) if r else Cell())
            if cells and not _empty(cells):
                t.rows.append(([model, lang, label], cells))
    return t


def beyond_multilingual(res: GridResults) -> Table:
    t = Table("beyond_multilingual", "Beyond the paper: several target languages in one run vs one language",
              ["model", "variant", "run langs", "metric"], ["one language", "all languages", "Δ (points)"],
              note="One language: the run trained on that language alone; all languages: the run trained on "
                   "every language of the entry at once, evaluated in each; Δ = all − one. An English row names "
                   "the one-language run it compares with.")
    variants = [v["name"] for v in res.variants() if v["method"] is not None]
    multi = [(m, lang) for m, lang in res.cells() if "+" in lang]
    for model, label in multi:
        langs = label.split("+")
        for v in variants:
            together = res.find(model, label, v)
            if together is None:
                continue
            for code in langs:
                alone = res.find(model, code, v)
                for row, key, metric in _metric_rows(res, [code]):
                    a = alone.cell(key, metric) if alone else Cell()
                    b = together.cell(key, metric)
                    if a.missing and b.missing:
                        continue
                    d = Cell(b.value - a.value) if a.value is not None and b.value is not None else Cell()
                    t.rows.append(([model, v, label, f"{row}, vs {code} alone" if key.endswith("_en") else row],
                                   [a, b, d]))
    return t


#: The report tables of this module: name -> function (in clo.report.TABLES after the paper's).
TABLES = {"beyond_cl_losses": beyond_cl_losses, "beyond_multilingual": beyond_multilingual}
