"""clo's ``lcb`` metric against the Language Confusion Benchmark's own compute_metrics.py.

tests/fixtures/lcb/ holds 113 of the benchmark's published outputs (two models, zh / ja / fr, both
tasks, every source) and the rows that the benchmark's code produced on exactly those outputs
(see its README); clo must reproduce every row.
"""

import csv
import json
from pathlib import Path

import pytest

from clo.eval import lcb_metrics as lm

FIXTURES = Path(__file__).parent / "fixtures" / "lcb"


@pytest.fixture(scope="module")
def words(shared_data):
    return lm.load_english_words(shared_data / "language_confusion" / "words")


def _sample() -> list[dict]:
    with (FIXTURES / "outputs_sample.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_sample_covers_what_the_rules_decide():
    rows = _sample()
    assert len(rows) == 113
    assert {r["model"] for r in rows} == {"command-r", "llama-2-instruct"}
    assert {r["language"] for r in rows} == {"zh", "ja", "fr"}
    # okapi is a source of both tasks: the two must stay apart
    assert {(r["task"], r["source"]) for r in rows} >= {("monolingual", "okapi"), ("crosslingual", "okapi")}


def test_every_row_equals_the_benchmark_code(words):
    expected = json.loads((FIXTURES / "lcb_metrics.json").read_text(encoding="utf-8"))
    got = lm.score_outputs(_sample(), english_words=words)
    rows = [{"task": t, "model": m, "source": s, "language": lang, **v}
            for (t, m), table in got.items() for (s, lang), v in table.items()]
    assert [(r["task"], r["model"], r["source"], r["language"]) for r in rows] == \
        [(e["task"], e["model"], e["source"], e["language"]) for e in expected]
    for r, e in zip(rows, expected):
        for k in ("acc", "lpr", "wpr"):
            if e[k] is None:
                assert r[k] is None, (r, k)
            else:
                assert r[k] == pytest.approx(e[k], abs=1e-9), (r, k)
    # (source, all), (all, lang) and (all, all) rows are among them
    keys = {(e["task"], e["source"], e["language"]) for e in expected}
    assert {("monolingual", "okapi", "all"), ("crosslingual", "all", "zh"), ("monolingual", "all", "all")} <= keys


def test_command_line_prints_the_benchmark_table(shared_data, capsys):
    lm.main([str(FIXTURES / "outputs_sample.csv"), "--words", str(shared_data / "language_confusion" / "words")])
    printed = [line for line in capsys.readouterr().out.splitlines() if line]
    assert printed == (FIXTURES / "lcb_compute_metrics.tsv").read_text(encoding="utf-8").splitlines()


def test_normalize_is_the_benchmarks():
    # ASCII punctuation goes, '#' included; no case folding, no whitespace collapsing
    assert lm.normalize("  Hallo, Welt! #1 — GUT\nQ: next question") == "Hallo Welt 1   GUT"
    assert lm.normalize("a\u060cb") == "ab"
    assert lm.normalize("Ja.\n\nNein\nQ:x\nQ:y") == "Ja\n\nNein"


def test_tokenizers_are_the_benchmarks():
    # jieba's own tokens, whitespace included: 6 tokens (a kept line), not 4
    assert lm.tokenize("我喜欢 学习 中文", "zh") == ["我", "喜欢", " ", "学习", " ", "中文"]
    # Japanese by fugashi (MeCab), not by whitespace
    assert lm.tokenize("東京は日本の首都です", "ja") == ["東京", "は", "日本", "の", "首都", "です"]
    assert lm.tokenize(" a  b c ", "fr") == ["a", "b", "c"]
    assert lm.ja_dictionary().endswith("sys.dic")


def test_language_id_is_raw_lid176_with_threshold():
    assert lm.lid_model_path().name == "lid.176.ftz"
    label, score = lm.lid_predict("粉絲他聽到時感到迷失。")
    assert label == "yue" and score > 0.3
    assert lm.langid("粉絲他聽到時感到迷失。") == "yue"  # not mapped to zh
    label, score = lm.lid_predict("Tout dabord la technologie a eu un")
    assert label == "fr" and score <= 0.3
    assert lm.langid("Tout dabord la technologie a eu un") == "unknown"
    # case is not folded: lid.176 is unsure of upper-case English
    assert lm.langid("HELLO WORLD HOW ARE YOU") == "unknown"
    assert lm.langid("hello world how are you") == "en"


def test_verdicts_and_rates_hand_made():
    words = frozenset({"computer"})

    def detect(lines):  # a transparent stand-in: Hangul -> ko, else en
        return ["ko" if any("\uac00" <= ch <= "\ud7a3" for ch in x) else "en" for x in lines]

    responses = [
        "안녕하세요 저는 오늘 학교에 갑니다.\n저는 친구와 함께 점심을 먹었습니다!",      # passes both
        "안녕하세요 저는 오늘 학교에 갑니다\nI went to the school with my friends today",  # line error
        "저는 오늘 computer 수업을 들었습니다 정말 재미있었어요",                        # word error
        "네, 좋아요!",                                                              # skipped
    ]
    vs = [lm.verdict(r, "ko", detect, words) for r in responses]
    assert [(v["skipped"], v["line_error"], v["word_error"]) for v in vs] == \
        [(False, False, False), (False, True, False), (False, False, True), (True, False, False)]
    assert [v["line_acc"] for v in vs] == [1.0, 0.5, 1.0, None]
    m = lm.rates(vs, "ko")
    assert m == {"acc": pytest.approx(2.5 / 3), "lpr": pytest.approx(2 / 3), "wpr": 0.5,
                 "lcpr": pytest.approx(4 / 7), "n": 4, "kept": 3}
    assert lm.rates(vs, "fr")["wpr"] is None and lm.rates(vs, "fr")["lcpr"] == m["lpr"]
    assert lm.rates([], "ko") == {"acc": 1.0, "lpr": 1.0, "wpr": 1.0, "lcpr": 1.0, "n": 0, "kept": 0}


def test_macro_averages():
    g = {("a", "fr"): {"acc": 1.0, "lpr": 0.5, "wpr": None},
         ("a", "zh"): {"acc": 0.5, "lpr": 0.25, "wpr": 0.5},
         ("b", "zh"): {"acc": 0.0, "lpr": 0.75, "wpr": 1.0}}
    t = lm.with_averages(g)
    assert list(t)[3:] == [("a", "all"), ("b", "all"), ("all", "fr"), ("all", "zh"), ("all", "all")]
    assert t[("a", "all")] == {"acc": 0.75, "lpr": 0.375, "wpr": 0.5, "lcpr": pytest.approx(2 * 0.375 * 0.5 / 0.875)}
    assert t[("all", "zh")]["lpr"] == 0.5 and t[("all", "zh")]["wpr"] == 0.75
    # (all, all) is the mean of the per-language rows, not of the per-source ones
    assert t[("all", "all")]["lpr"] == 0.5 and t[("all", "all")]["wpr"] == 0.75
    assert t[("all", "fr")]["wpr"] is None
