import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

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


FIXTURE = Path(__file__).parent / "fixtures" / "alpaca_eval_lc"


def _published():
    ann = json.loads((FIXTURE / "annotations.json").read_text(encoding="utf-8"))
    with (FIXTURE / "instruction_difficulty.csv").open() as f:
        difficulty = [float(r["instruction_difficulty"]) for r in csv.DictReader(f)]
    expected = json.loads((FIXTURE / "expected.json").read_text())
    return ann, difficulty, expected


@pytest.mark.parametrize("glm", ["length_controlled_minimal", "length_controlled_noreg"])
def test_lc_win_rate_equals_alpaca_eval_on_its_published_annotations(glm):
    """Characters and English, where clo's definition is alpaca_eval's: its own function's result
    (tests/fixtures/alpaca_eval_lc/README.md). Same solver, seed and folds: equal to rounding."""
    ann, difficulty, expected = _published()
    scores = [a["preference"] - 1 for a in ann]  # alpaca_eval: 2 = output_2 (the model) wins
    lc = length_controlled_win_rate(scores, [len(a["output_2"]) for a in ann], [len(a["output_1"]) for a in ann],
                                    instruction_difficulty=difficulty if glm.endswith("noreg") else None)
    assert lc == pytest.approx(expected[glm]["length_controlled_winrate"], abs=1e-9)
    assert sum(scores) / len(scores) == pytest.approx(expected[glm]["win_rate"], abs=1e-12)
    assert abs(lc - expected[glm]["win_rate"]) > 0.01  # the fit did correct something


def test_lc_win_rate_removes_length_preference():
    # Longer answers win 3 of 4, shorter ones 1 of 4: by symmetry the fit has no baseline term,
    # so at equal length the model wins half the time.
    s = [1, 1, 1, 0, 1, 0, 0, 0] * 4
    assert length_controlled_win_rate(s, ([20] * 4 + [10] * 4) * 4, ([10] * 4 + [20] * 4) * 4) == 0.5


def test_lc_win_rate_hand_derived_without_cross_validation():
    # 4 items (< 5 folds): C = 100, equal lengths leave the baseline weight a alone. Minimising
    # |a| + C * sum_i CE(s_i, sigma(a)) gives sigma(a) = mean(s) - 1/(C n) for a > 0.
    lc = length_controlled_win_rate([1, 0.5, 0, 1], [5] * 4, [5] * 4)
    assert lc == pytest.approx(0.625 - 1 / (100 * 4), abs=1e-4)  # liblinear's tolerance


def test_lc_win_rate_corrects_for_length_and_edge_cases():
    # The judge prefers longer answers (0.8 for the longer, 0.4 for the shorter) and the model is
    # mostly the longer one: its raw win rate 0.7 flatters it; at equal length it wins less.
    lengths = [30] * 30 + [10] * 10
    s = [0.8] * 30 + [0.4] * 10
    lc = length_controlled_win_rate(s, lengths, [20] * 40)
    assert sum(s) / len(s) == pytest.approx(0.7)
    assert 0.55 < lc < 0.66
    # Symmetric lengths and outcomes: no advantage at equal length.
    s = [0.8] * 20 + [0.2] * 20
    assert length_controlled_win_rate(s, [30] * 20 + [10] * 20, [20] * 40) == pytest.approx(0.5, abs=1e-9)
    assert length_controlled_win_rate([1.0] * 6, [1, 2, 3, 4, 5, 6], [3] * 6) == 1.0
    assert length_controlled_win_rate([0.0] * 6, [1, 2, 3, 4, 5, 6], [3] * 6) == 0.0
    assert math.isnan(length_controlled_win_rate([], [], []))


def test_lc_win_rate_validates_lengths():
    with pytest.raises(ValueError, match="same length"):
        length_controlled_win_rate([1, 0], [1], [1, 2])
    with pytest.raises(ValueError, match="instruction_difficulty has 1 values for 2"):
        length_controlled_win_rate([1, 0], [1, 2], [1, 2], instruction_difficulty=[0.1])


def test_length_counter_counts_tokens_of_one_tokenizer():
    from clo.eval.alpacaeval import length_counter
    from clo.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    ctx = SimpleNamespace(tokenizer=tok, model_name="m")
    name, count = length_counter(ctx)
    zh, en = "猫在沙发上睡觉。", "The cat sleeps on the sofa."
    assert name.startswith("tokens:")
    assert count(zh) == len(tok(zh, add_special_tokens=False)["input_ids"])
    assert count(en) == len(tok(en, add_special_tokens=False)["input_ids"])
    assert length_counter(ctx, "chars") == ("chars", len)
    from clo.eval.core import EvalDataError

    with pytest.raises(EvalDataError, match="lc_length='words'"):
        length_counter(ctx, "words")


def test_instruction_difficulty_by_position_and_win_rate_metrics(tmp_path):
    from clo.eval.alpacaeval import _win_rate_metrics, load_instruction_difficulty
    from clo.eval.core import EvalDataError

    assert load_instruction_difficulty(None, tmp_path, 3) is None  # no file: no instruction term
    (tmp_path / "alpaca_eval").mkdir()
    (tmp_path / "alpaca_eval" / "instruction_difficulty.csv").write_text(
        "index,instruction_difficulty\n1,0.5\n0,-0.25\n2,1.0\n")
    assert load_instruction_difficulty(None, tmp_path, 3) == [-0.25, 0.5, 1.0]
    with pytest.raises(EvalDataError, match=r"no difficulty for instruction\(s\) \[3\]"):
        load_instruction_difficulty(str(tmp_path / "alpaca_eval" / "instruction_difficulty.csv"), None, 4)
    m = _win_rate_metrics([1, 0, 1], [3, 1, 2], [2, 2, 2], 0, [-0.25, 0.5, 1.0], "tokens:t")
    assert (m["lc_glm"], m["lc_length"]) == ("length_controlled_noreg", "tokens:t")
    assert _win_rate_metrics([1, 0], [1, 2], [2, 2], 0)["lc_glm"] == "length_controlled_minimal"
