"""Statistics of evaluation results: pure functions, numbers in, numbers out."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean.

    .. math::

        \\bar x = \\frac1n \\sum_i x_i, \\qquad
        \\mathrm{SE} = \\sqrt{\\frac{1}{n(n-1)} \\sum_i (x_i - \\bar x)^2}

    (sample standard deviation, ``ddof=1``, over ``sqrt(n)``: lm-evaluation-harness's
    ``mean_stderr``). One value has no spread to estimate: SE 0. No values: ``(nan, nan)``.
    """
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    m = math.fsum(values) / n
    if n == 1:
        return m, 0.0
    var = math.fsum((x - m) ** 2 for x in values) / (n - 1)
    return m, math.sqrt(var / n)


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    """:math:`2ab/(a+b)`; 0 when both are 0, None when either is missing."""
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def length_controlled_win_rate(
    scores: Sequence[float], len_model: Sequence[int], len_baseline: Sequence[int], *,
    ridge: float = 1e-6, iters: int = 100,
) -> float:
    """Win rate at equal length, from a logistic model of the judge's preference on length.

    The outcome ``s_i`` (1 win, 0.5 tie, 0 loss) is modelled as

    .. math::

        P(\\text{win}_i) = \\sigma(a + b\\, x_i), \\qquad
        x_i = \\tanh\\!\\left(\\frac{\\ell^{m}_i - \\ell^{b}_i}{\\operatorname{sd}(\\ell^{m} - \\ell^{b})}\\right)

    fitted by maximum likelihood with ``s_i`` as soft labels (Newton's method, a small ridge on
    ``b`` only so that perfectly separable data stays finite); the length-controlled win rate is
    :math:`\\sigma(a)`, the predicted win rate when both outputs have the same length. This is the
    length term of AlpacaEval 2's length-controlled GLM (Dubois et al., 2024) without its
    per-instruction difficulty term, which needs many models judged on the same instructions.
    """
    n = len(scores)
    if not (n == len(len_model) == len(len_baseline)):
        raise ValueError("scores, len_model and len_baseline must have the same length")
    if n == 0:
        return math.nan
    diffs = [float(m - b) for m, b in zip(len_model, len_baseline)]
    mu = math.fsum(diffs) / n
    sd = math.sqrt(math.fsum((d - mu) ** 2 for d in diffs) / n)
    xs = [math.tanh(d / sd) if sd > 0 else 0.0 for d in diffs]
    a = b = 0.0
    for _ in range(iters):
        # Gradient and Hessian of the negative log-likelihood (+ ridge/2 * b^2).
        ga = gb = haa = hab = hbb = 0.0
        for s, x in zip(scores, xs):
            p = _sigmoid(a + b * x)
            r = p - s
            w = p * (1 - p)
            ga += r
            gb += r * x
            haa += w
            hab += w * x
            hbb += w * x * x
        gb += ridge * b
        hbb += ridge
        det = haa * hbb - hab * hab
        if det <= 1e-300:
            # No information on b (all x equal): the one-parameter fit is logit(mean).
            m = min(max(math.fsum(scores) / n, 1e-12), 1 - 1e-12)
            return _sigmoid(math.log(m / (1 - m)))
        da = (hbb * ga - hab * gb) / det
        db = (haa * gb - hab * ga) / det
        a -= da
        b -= db
        if abs(da) < 1e-12 and abs(db) < 1e-12:
            break
    return _sigmoid(a)
