import pytest

from clo.data.checks import check_record, length_ratio, prose, repetition
from clo.data.config import ChecksConfig


def test_repetition_hand_computed():
    # "abababab" with n=2: 7 bigrams, distinct {ab, ba} -> 1 - 2/7.
    assert repetition("abababab", n=2) == pytest.approx(1 - 2 / 7)
    # all distinct: "abcdef" n=2 -> 5 bigrams, 5 distinct.
    assert repetition("abcdef", n=2) == 0.0
    # whitespace runs collapse: "a  a" -> "a a": bigrams "a ", " a" distinct.
    assert repetition("a  a", n=2) == 0.0
    assert repetition("short", n=10) == 0.0


def test_length_ratio_and_prose():
    assert length_ratio("abcd", "  abcdefgh ") == 2.0
    assert prose("Text `code` more\n```py\nx = 1\n```\nend") == "Text   more\n\nend"


CFG = ChecksConfig()
X = "Explain how photosynthesis works in green plants."
Y = "Plants turn light, water and carbon dioxide into sugar and oxygen."
X_DE = "Erkläre, wie die Photosynthese in grünen Pflanzen funktioniert."
Y_DE = "Pflanzen verwandeln Licht, Wasser und Kohlendioxid in Zucker und Sauerstoff."


def test_good_translation_passes():
    c = check_record(X, Y, X_DE, Y_DE, "de", CFG)
    assert c["passed"] and c["reasons"] == []
    assert c["x_tgt"]["lang"] == "de" and c["y_tgt"]["lang"] == "de"
    assert c["x_tgt"]["length_ratio"] == round(len(X_DE) / len(X), 4)


def test_each_failure_has_its_reason():
    loop = "Pflanzen machen Zucker. " * 12
    c = check_record(X, Y, X, loop, "de", CFG)
    assert c["reasons"] == ["lang_x_tgt", "length_ratio_y_tgt", "repetition_y_tgt"]
    assert not c["passed"]
    c = check_record(X, Y, "Erkläre.", "", "de", CFG)
    assert c["reasons"] == ["length_ratio_x_tgt", "empty_y_tgt"]
    c = check_record("", Y, X_DE, Y_DE, "de", CFG)
    assert c["reasons"][0] == "empty_x_en"


def test_short_and_letterless_texts_are_not_judged():
    # "42" is undecidable (no letters) and too short for the ratio check: it passes.
    c = check_record("What is 6 times 7?", "42", "Was ist 6 mal 7?", "42", "de", CFG)
    assert c["y_tgt"]["lang"] is None
    assert c["passed"], c


def test_too_few_letters_is_undecidable():
    c = check_record("Convert 25°C to Fahrenheit.", "77.0°F", "Rechne 25°C in Fahrenheit um.", "77.0°F", "de", CFG)
    assert c["y_tgt"]["lang"] is None and c["passed"], c
    c = check_record("One word.", "Fog rolls in over the hills.", "Ein Wort.", "Fog rolls in over the hills.", "de", CFG)
    assert c["y_tgt"]["lang"] == "en" and c["reasons"] == ["lang_y_tgt"]


def test_cjk_ratio_uses_expected_ratio():
    en = "The weather is very nice today, let us go for a walk in the park."
    zh = "今天天气很好，我们去公园散步吧。"  # 16 characters for 66: ratio 0.24, fine for Chinese
    c = check_record("Say something.", en, "说点什么。", zh, "zh", CFG)
    assert "length_ratio_y_tgt" not in c["reasons"], c
    c = check_record("Say something.", en, "Sag etwas.", "Das Wetter ist gut.", "de", CFG)
    assert "length_ratio_y_tgt" in c["reasons"]  # 19/66 = 0.29 < 0.4 for German
