import json
import re

import pytest

from clo.config import load_config
from clo.eval import evaluate
from clo.eval import fidelity as fd
from clo.testing import tiny_model, tiny_tokenizer

HANGUL = re.compile(r"[\uac00-\ud7a3]")


def rule_detector(lines):
    # An independent, transparent stand-in for language ID: any Hangul -> ko, else en.
    return ["ko" if HANGUL.search(x) else "en" for x in lines]


KO_RESPONSES = [
    "안녕하세요 저는 오늘 학교에 갑니다.\n저는 친구와 함께 점심을 먹었습니다!",      # passes both
    "안녕하세요 저는 오늘 학교에 갑니다\nI went to the school with my friends today",  # line error
    "저는 오늘 computer 수업을 들었습니다 정말 재미있었어요",                        # word error
    "네, 좋아요!",                                                              # < 5 tokens: skipped
    "Hello",                                                                   # skipped
]


def test_line_and_word_pass_rates_hand_made():
    words = frozenset({"computer", "school", "friends"})
    vs = [fd.response_verdict(r, "ko", rule_detector, words) for r in KO_RESPONSES]
    assert [v["skipped"] for v in vs] == [False, False, False, True, True]
    assert [v["line_error"] for v in vs[:3]] == [False, True, False]
    # the English words of the line-failing response do not count twice
    assert [v["word_error"] for v in vs[:3]] == [False, False, True]
    rates = fd.pass_rates(vs, word_level=True)
    assert rates == {"lpr": 1 - 1 / 3, "wpr": 1 - 1 / 2, "kept": 3}
    assert fd.pass_rates(vs, word_level=False)["wpr"] is None


def test_normalize_and_tokenize():
    assert fd.lcb_normalize("  Hallo, Welt! #1 — gut\nQ: next question") == "Hallo Welt 1   gut"
    assert fd.lcb_tokenize("我喜欢学习中文", "zh") == ["我", "喜欢", "学习", "中文"]
    assert fd.lcb_tokenize("a  b c", "de") == ["a", "b", "c"]


def test_english_word_list_filter(shared_data):
    words = fd.load_english_words(shared_data / "language_confusion" / "words")
    assert "computer" in words and "school" in words
    assert "the" not in words  # 3 letters or fewer are not counted
    assert not any(w != w.lower() for w in words)


def _scripted(responses):
    def gen(model, tok, prompts, **kw):
        yield list(range(len(prompts))), [responses[i] for i in range(len(prompts))]
    return gen


def test_confusion_task_korean(shared_data, tmp_path, monkeypatch):
    monkeypatch.setattr("clo.eval.generation.iter_generate", _scripted(KO_RESPONSES))
    cfg = load_config(None, [f"eval.data_dir={shared_data}", "lang=ko"])
    m = evaluate("confusion", (tiny_model("llama", vocab_size=512), tiny_tokenizer()), cfg, tmp_path, limit=5)
    assert m["n"] == 5
    assert m["lpr"] == pytest.approx(2 / 3) and m["wpr"] == pytest.approx(0.5)
    assert m["lcpr"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))  # 4/7
    recs = json.loads((tmp_path / "confusion-ko.json").read_text())["records"]
    assert recs[0]["source"] == "native_prompts" and recs[0]["language"] == "ko"


def test_fidelity_task(tmp_path, monkeypatch):
    responses = [
        "Berlin ist die Hauptstadt von Deutschland und hat viele Museen.",
        "Ich habe heute mit meinen Freunden im Park Fußball gespielt.",
        "The capital of Germany is Berlin, which has many museums.",
        "12345 !!!",
    ]
    monkeypatch.setattr("clo.eval.generation.iter_generate", _scripted(responses))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "x_tgt": f"Frage {i}"}) + "\n" for i in range(4)))
    cfg = load_config(None, ["lang=de"])
    m = evaluate("fidelity", (tiny_model("llama", vocab_size=512), tiny_tokenizer()), cfg, tmp_path,
                 prompts_file=str(prompts))
    assert m == {"rate": 0.5, "n": 4, "per_language": {"de": 0.5, "en": 0.25, "none": 0.25}}
    recs = json.loads((tmp_path / "fidelity-de.json").read_text())["records"]
    assert [r["prompt"] for r in recs] == [f"Frage {i}" for i in range(4)]
    assert [r["detected"] for r in recs] == ["de", "de", "en", None]


def test_prompts_file_errors(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"x_tgt": "a"}\n{"other": 1}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: expected a string or an object with one of the fields"):
        fd.load_prompts(bad)
    with pytest.raises(ValueError, match="unknown prompts format '.yaml'"):
        (tmp_path / "p.yaml").write_text("x")
        fd.load_prompts(tmp_path / "p.yaml")
