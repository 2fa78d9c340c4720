import math

import pytest

from clo.eval.stats import harmonic_mean, length_controlled_win_rate, mean_stderr


def test_mean_stderr_hand_computed():
    # mean 0.75; squared deviations 4*0.0625 + 0.5625 + 0.0625 = 0.875; SE = sqrt(0.875/5/6)
    m, se = mean_stderr([1, 1, 1, 0, 0.5, 1])
    assert m == 0.75
    assert se == pytest.approx(math.sqrt(0.875 / 30), abs=1e-15)


def test_mean_stderr_edge_cases():
    assert mean_stderr([0.3]) == (0.3, 0.0)
    m, se = mean_stderr([])
    assert math.isnan(m) and math.isnan(se)
    # Bernoulli: p(1-p)/(n-1) * n/n ... for 2 of 4 correct: var = 4*0.25/3, SE = sqrt(1/3/4)
    assert mean_stderr([1, 0, 1, 0])[1] == pytest.approx(math.sqrt(1 / 12))


def test_harmonic_mean():
    assert harmonic_mean(0.5, 1.0) == pytest.approx(2 / 3)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(0.9, None) is None


def test_lc_win_rate_removes_length_preference():
    # Longer answers (x=+t) win 3 of 4, shorter ones (x=-t) 1 of 4: sigma(a+bt)=.75, sigma(a-bt)=.25,
    # so a = 0: at equal length the model wins half the time although it won 4 of 8 anyway.
    s = [1, 1, 1, 0, 1, 0, 0, 0]
    lc = length_controlled_win_rate(s, [20] * 4 + [10] * 4, [10] * 4 + [20] * 4)
    assert lc == pytest.approx(0.5, abs=1e-9)


def test_lc_win_rate_hand_derived():
    # sigma(a+bt)=.75 and sigma(a-bt)=.5  =>  a = (logit(.75) + logit(.5)) / 2 = ln(3)/2
    s = [1, 1, 1, 0, 1, 1, 0, 0]
    lc = length_controlled_win_rate(s, [20] * 4 + [10] * 4, [10] * 4 + [20] * 4)
    assert lc == pytest.approx(1 / (1 + math.exp(-math.log(3) / 2)), abs=1e-6)
    assert sum(s) / len(s) == 0.625  # raw win rate differs: the fit corrects for length


def test_lc_win_rate_equal_lengths_is_raw_win_rate():
    assert length_controlled_win_rate([1, 0.5, 0, 1], [5] * 4, [5] * 4) == pytest.approx(0.625)


def test_lc_win_rate_validates_lengths():
    with pytest.raises(ValueError, match="same length"):
        length_controlled_win_rate([1, 0], [1], [1, 2])
