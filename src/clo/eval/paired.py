"""Paired comparisons of two models on the same items: the difference of their per-item values.

Two models scored on the same items are compared item by item: ``d_i = a_i - b_i``, its mean
and the standard error of that mean,

.. math::

    \\bar d = \\frac1n \\sum_i d_i, \\qquad
    \\mathrm{SE}(\\bar d) = \\sqrt{\\frac{1}{n(n-1)} \\sum_i (d_i - \\bar d)^2}

(:func:`clo.eval.stats.mean_stderr` of the differences). The item-to-item spread that both models
share cancels in ``d_i``, so the paired SE is smaller than the two unpaired SEs combined whenever
the models agree on which items are hard: on a few dozen items it is what separates an effect from
noise. ``ci95`` is the normal interval ``mean ± 1.96 SE``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from clo.eval.stats import mean_stderr

Z95 = 1.959963984540054


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """``{"mean", "se", "ci95": [lo, hi], "n"}`` of ``a_i - b_i`` (equal lengths, same item order).

    A share (values 0/1) gives the difference of the two shares; no items: mean and SE None."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values against {len(b)}; pair them by item first")
    n = len(a)
    if n == 0:
        return {"mean": None, "se": None, "ci95": None, "n": 0}
    m, se = mean_stderr([float(x) - float(y) for x, y in zip(a, b)])
    return {"mean": m, "se": se, "ci95": [m - Z95 * se, m + Z95 * se], "n": n}


def align(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[list[str], list[float], list[float]]:
    """The items both ``{id: value}`` maps hold (``a``'s order), and their values in each.

    Values that are None or not finite (an item one model could not score) leave the item out."""
    def ok(v) -> bool:
        return v is not None and math.isfinite(float(v))

    ids = [k for k in a if k in b and ok(a[k]) and ok(b[k])]
    return ids, [float(a[k]) for k in ids], [float(b[k]) for k in ids]


def compare(a: Mapping[str, float], b: Mapping[str, float]) -> dict:
    """:func:`paired_difference` of ``a`` minus ``b`` on the items both hold (``{id: value}`` maps)."""
    _, x, y = align(a, b)
    return paired_difference(x, y)
