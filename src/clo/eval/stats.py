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


#: alpaca_eval's GLM (``metrics/glm_winrate.py``): features, solver and its cross-validation.
LC_SEED = 123
LC_FOLDS = 5
LC_C_WITHOUT_CV = 100.0


def _l1(cv: bool) -> dict:
    """L1 penalty in the keyword this scikit-learn takes: ``penalty`` is deprecated from 1.8 on (and
    gone in 1.10) in favour of an L1 ratio of 1, the same objective."""
    import inspect

    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    cls = LogisticRegressionCV if cv else LogisticRegression
    params = inspect.signature(cls.__init__).parameters
    if "penalty" in params and params["penalty"].default != "deprecated":
        return {"penalty": "l1"}
    if not cv:
        return {"l1_ratio": 1.0}
    return {"l1_ratios": (1.0,), **({"use_legacy_attributes": False} if "use_legacy_attributes" in params else {})}


def _soft_log_loss(y_true, y_pred, true_prob):
    """alpaca_eval's CV score for soft labels: each duplicated row's label is turned back into the
    preference it carries, then the mean cross-entropy (clipped at 1e-15)."""
    import numpy as np

    p = np.where(y_true == 1, true_prob, 1 - true_prob)
    q = np.clip(y_pred, 1e-15, 1 - 1e-15)
    return -np.mean(p * np.log(q) + (1 - p) * np.log(1 - q))


def length_controlled_win_rate(
    scores: Sequence[float], len_model: Sequence[float], len_baseline: Sequence[float], *,
    instruction_difficulty: Sequence[float] | None = None, n_splits: int = LC_FOLDS,
) -> float:
    """AlpacaEval 2's length-controlled win rate (Dubois et al., 2024; alpaca_eval's
    ``get_length_controlled_winrate``), from any length measure.

    The judge's preference for the model, ``s_i`` (1 win, 0.5 tie, 0 loss, or a probability), is
    modelled by a logistic GLM without intercept:

    .. math::

        P(\\text{model}_i \\succ \\text{baseline}_i) = \\sigma\\big(\\theta_{len} \\tanh(\\delta_i / \\operatorname{sd}(\\delta))
            + \\theta_{inst}\\, d_i + \\theta_{base}\\big), \\qquad \\delta_i = \\ell^{b}_i - \\ell^{m}_i

    (``sd`` with ``ddof=1``; ``d_i`` the instruction's difficulty, a term left out when none is
    given). The fit is alpaca_eval's: L1-penalised maximum likelihood with soft labels (each item
    twice, labels 1 and 0 weighted ``s_i`` and ``1 - s_i``), liblinear, the penalty chosen among
    ``C = 10^-4 ... 10^4`` (10 values) by ``n_splits``-fold cross-validation over items (fewer items
    than folds: ``C = 100``, its no-CV setting). The length-controlled win rate is the mean
    prediction at equal lengths:

    .. math::  \\mathrm{LC} = \\frac1n \\sum_i \\sigma(\\theta_{inst}\\, d_i + \\theta_{base})

    With characters as lengths and alpaca_eval's difficulties this is alpaca_eval's
    ``length_controlled_noreg`` GLM (``length_controlled_minimal`` without difficulties); its
    default, ``length_controlled_v1``, also fits annotations of length-gamed GPT-4 baselines
    judged by GPT-4 Turbo in English, which exist for no other judge or language.
    """
    import numpy as np

    n = len(scores)
    if not (n == len(len_model) == len(len_baseline)):
        raise ValueError("scores, len_model and len_baseline must have the same length")
    if instruction_difficulty is not None and len(instruction_difficulty) != n:
        raise ValueError(f"instruction_difficulty has {len(instruction_difficulty)} values for {n} items")
    if n == 0:
        return math.nan
    s = np.asarray(scores, dtype=float)
    if np.all(s == s[0]) and s[0] in (0.0, 1.0):
        # All wins or all losses: no length can change that, and with one label weighted 0
        # liblinear drops a class and fits nonsense (alpaca_eval returns 50% for a model losing all).
        return float(s[0])
    delta = np.asarray(len_baseline, dtype=float) - np.asarray(len_model, dtype=float)
    sd = delta.std(ddof=1) if n > 1 else 0.0
    # No spread of lengths: length explains nothing, and the feature is 0 (alpaca_eval would divide by 0).
    x_len = np.tanh(delta / sd) if sd > 0 else np.zeros(n)
    cols = [x_len] + ([np.asarray(instruction_difficulty, dtype=float)] if instruction_difficulty is not None else [])
    X = np.column_stack([*cols, np.ones(n)])  # patsy's column order: length, difficulty, baseline
    X_test = X.copy()
    X_test[:, 0] = 0.0
    # Soft labels as alpaca_eval feeds them to a classifier: the items twice (label 1, then 0),
    # weighted by the probability of that label.
    X2, y2 = np.vstack([X, X]), np.r_[np.ones(n), np.zeros(n)]
    prob2 = np.r_[s, 1 - s]
    groups = np.r_[np.arange(n), np.arange(n)]
    model = _fit_glm(X2, y2, prob2, groups, n_splits if n >= n_splits else 0)
    return float(model.predict_proba(X_test)[:, 1].mean())


def _fit_glm(X, y, prob, groups, n_splits: int):
    import sklearn
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    common = {"random_state": LC_SEED, "dual": False, "solver": "liblinear", "n_jobs": None, "fit_intercept": False}
    if n_splits == 0:
        return LogisticRegression(C=LC_C_WITHOUT_CV, **common, **_l1(cv=False)).fit(X, y, sample_weight=prob)
    # The scorer needs each row's label probability: passed through scikit-learn's metadata
    # routing, switched on for this fit only (alpaca_eval switches it on process-wide).
    with sklearn.config_context(enable_metadata_routing=True):
        scorer = make_scorer(_soft_log_loss, response_method="predict_proba", greater_is_better=False)
        model = LogisticRegressionCV(cv=GroupKFold(n_splits=n_splits), scoring=scorer.set_score_request(true_prob=True),
                                     **common, **_l1(cv=True))
        model.set_fit_request(sample_weight=True)
        return model.fit(X, y, sample_weight=prob, groups=groups, true_prob=prob)
