"""Rendered evaluation prompts, checked as exact strings."""

import pytest

from clo import languages
from clo.eval import belebele as bb
from clo.eval import mmmlu

ROW = {"flores_passage": "P text.", "question": " Q? ", "mc_answer1": "a1", "mc_answer2": "a2",
       "mc_answer3": "a3", "mc_answer4": "a4", "correct_answer_num": "2"}

ABCD = [" A", " B", " C", " D"]
NATIVE = {
    "en": ("Passage: P text.\nQuestion: Q?\nA: a1\nB: a2\nC: a3\nD: a4\nAnswer:", ABCD),
    "zh": ("文档: P text.\n问题: Q?\nA: a1\nB: a2\nC: a3\nD: a4\n答案:", ABCD),
    "de": ("Dokument: P text.\nFrage: Q?\nA: a1\nB: a2\nC: a3\nD: a4\nAntwort:", ABCD),
    "ko": ("문서: P text.\n질문: Q?\n가) a1\n나) a2\n다) a3\n라) a4\n정답:", [" 가)", " 나)", " 다)", " 라)"]),
    "id": ("Dokumen: P text.\nPertanyaan: Q?\nA: a1\nB: a2\nC: a3\nD: a4\nJawaban:", ABCD),
    "sw": ("Hati: P text.\nSwali: Q?\nA: a1\nB: a2\nC: a3\nD: a4\nJibu:", ABCD),
    "yo": ("Iwe: P text.\nIbéèrè: Q?\nA: a1\nB: a2\nC: a3\nD: a4\nIdahun:", ABCD),
}


@pytest.mark.parametrize("code", sorted(NATIVE))
def test_belebele_native_template(code):
    assert bb.render(ROW, languages.get(code), "native") == (NATIVE[code][0], NATIVE[code][1])


@pytest.mark.parametrize("code", sorted(NATIVE))
def test_belebele_harness_template_is_language_independent(code):
    ctx, conts = bb.render(ROW, languages.get(code), "harness")
    assert ctx == "P: P text.\nQ: Q?\nA: a1\nB: a2\nC: a3\nD: a4\nAnswer:"
    assert conts == ABCD


def test_belebele_harness_template_equals_lm_eval_yaml():
    pytest.importorskip("lm_eval", reason="lm-eval not installed (dev extra)")
    from jinja2 import Template

    from clo.eval.harness import _harness_template_config

    cfg = _harness_template_config()
    assert Template(cfg["doc_to_text"]).render(**ROW) == bb.render(ROW, languages.get("en"), "harness")[0]
    assert [" " + c for c in cfg["doc_to_choice"]] == ABCD


def test_unknown_template():
    with pytest.raises(ValueError, match="unknown BELEBELE template 'x'; known: native, harness"):
        bb.render(ROW, languages.get("en"), "x")


MROW = {"Question": " What is 2+2? ", "A": "3", "B": "4", "C": "5", "D": "22", "Answer": "B", "Subject": "x"}
OPTIONS = "What is 2+2?\n\nA) 3\nB) 4\nC) 5\nD) 22"


def test_mmmlu_prompt_english_exact():
    assert mmmlu.render_prompt(MROW, languages.get("en")) == (
        "Answer the following multiple choice question. The last line of your response should be of the "
        "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by "
        "step before answering.\n\n" + OPTIONS)


def test_mmmlu_prompt_korean_exact():
    assert mmmlu.render_prompt(MROW, languages.get("ko")) == (
        "다음 객관식 질문에 답하세요. 응답의 마지막 줄은 다음 형식이어야 합니다: '답변: $LETTER' "
        "(따옴표 제외). 여기서 LETTER는 ABCD 중 하나입니다. 답하기 전에 단계별로 생각하세요.\n\n" + OPTIONS)


@pytest.mark.parametrize("code,word", [("en", "Answer"), ("zh", "答案"), ("de", "Antwort"), ("ko", "답변"),
                                       ("id", "Jawaban"), ("sw", "Jibu"), ("yo", "Idahun")])
def test_mmmlu_prompt_every_language(code, word):
    lang = languages.get(code)
    prompt = mmmlu.render_prompt(MROW, lang)
    assert prompt == lang.mmmlu_instruction + "\n\n" + OPTIONS
    assert f"'{word}: $LETTER'" in prompt
    # the extractor reads the answer word the prompt asks for
    assert mmmlu.extract_answer(f"...\n{word}: C") == "C"
