import json
from collections import Counter

import pytest

from clo.config import load_config
from clo.eval import evaluate, mmmlu
from clo.eval.mmmlu import extract_answer, stratified_sample

# (response, expected letter or None): realistic model outputs in the seven languages.
TABLE = [
    # English
    ("Let's think. 2+2 is 4, which is option B.\nAnswer: B", "B"),
    ("The correct choice is clearly the second one.\n\n**Answer:** B", "B"),
    ("Answer: A\nWait, that is wrong.\nAnswer: D", "D"),
    ("Therefore the final answer is $\\boxed{C}$.", "C"),
    ("Final Answer: \\boxed{\\text{A}}", "A"),
    ("Answer: Because the question is ambiguous, none.", None),
    ("I think it's either B or C.", None),
    ("The answer is a matter of opinion.", None),
    # a lower-case letter after an answer word, when it is the whole answer or an option label
    ("answer : a", "A"),
    ("Let me see... the answer is c.", "C"),
    ("Final answer: (d)", "D"),
    ("Answer: b) Paris", "B"),
    ("Answer: **c**\nBecause the others are wrong.", "C"),
    ("answer: a good question, but B is right.", None),          # "a" is a word here
    ("The answer depends on a few things.", None),
    ("I would pick a.", None),                                   # no answer word
    ("answer: b, c or d", None),
    ("B) Rhinovirus", "B"),                                    # just the chosen option line
    ("A) Wrong, Wrong\nC) Not wrong, Not wrong", None),          # two options named
    ("Answer: $LADY SMALL\n\nA) Lisa 2", None),                 # garbage, option line not first
    # Chinese (full-width letter and colon)
    ("首先计算……所以选 C。\n答案：Ｃ", "C"),
    ("答案是 **B**。", "B"),
    ("这个问题没有正确答案。", None),
    # German
    ("Schritt für Schritt: ...\nAntwort: D", "D"),
    ("Die Antwort ist C.", "C"),
    ("**Antwort:** (A)", "A"),
    ("Antwort: Das hängt davon ab.", None),
    ("Antwort: c", "C"),
    # Korean (Latin and Hangul option letters)
    ("단계별로 생각해 봅시다.\n답변: B", "B"),
    ("정답은 다입니다.", "C"),
    ("답변: 라", "D"),
    ("답변: 다음과 같이 생각합니다.", None),
    # Indonesian
    ("Mari kita pikirkan langkah demi langkah.\nJawaban: A", "A"),
    ("Jawabannya adalah D.", "D"),
    ("Jawaban: Bukan salah satunya.", None),
    ("Jawaban : b", "B"),
    ("Jawabannya adalah d.", "D"),
    ("Jawaban: buku itu.", None),
    # Swahili
    ("Tufikiri hatua kwa hatua.\nJibu: C", "C"),
    ("Jibu ni B.", "B"),
    ("Sijui jibu.", None),
    # Yoruba
    ("Ẹ jẹ́ ká ronú.\nIdahun: B", "B"),
    ("Ìdáhùn: Ａ", "A"),
    ("Mi ò mọ̀.", None),
]


@pytest.mark.parametrize("text,expected", TABLE)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_stratified_sample_proportional_and_deterministic():
    rows = [{"Subject": s, "id": str(i)} for i, s in enumerate(["a"] * 50 + ["b"] * 30 + ["c"] * 20)]
    got = stratified_sample(rows, 10, seed=1)
    assert Counter(r["Subject"] for r in got) == {"a": 5, "b": 3, "c": 2}
    assert got == stratified_sample(rows, 10, seed=1)
    assert [int(r["id"]) for r in got] == sorted(int(r["id"]) for r in got)  # file order kept
    # quotas 3.5/2.1/1.4 -> 3/2/1 + the largest remainder (a: .5) -> 4/2/1
    assert Counter(r["Subject"] for r in stratified_sample(rows, 7, seed=0)) == {"a": 4, "b": 2, "c": 1}
    assert stratified_sample(rows, None) is rows


def test_regeneration_path(tmp_path, monkeypatch):
    """Item 0 answers at once; item 1 on the 2nd try; item 2 never (1 + 3 attempts, then wrong)."""
    (tmp_path / "mmlu").mkdir()
    (tmp_path / "mmlu" / "mmlu_DE-DE.csv").write_text(
        ",Question,A,B,C,D,Answer,Subject\n"
        "0,Q0,a,b,c,d,A,anatomy\n1,Q1,a,b,c,d,B,anatomy\n2,Q2,a,b,c,d,C,philosophy\n", encoding="utf-8")
    calls = []

    def scripted(model, tok, prompts, *, seed, **kw):
        attempt = seed // 1000
        calls.append((attempt, len(prompts)))
        texts = []
        for p in prompts:
            q = p.split("\n\n")[1]
            if q == "Q0":
                texts.append("Antwort: A")
            elif q == "Q1":
                texts.append("Hmm." if attempt == 0 else "Antwort: D")
            else:
                texts.append("Ich weiß es nicht.")
        yield list(range(len(prompts))), texts

    monkeypatch.setattr("clo.eval.generation.iter_generate", scripted)
    from clo.testing import tiny_model, tiny_tokenizer

    cfg = load_config(None, [f"eval.data_dir={tmp_path}", "lang=de"])
    m = evaluate("mmmlu", (tiny_model("llama", vocab_size=512), tiny_tokenizer()), cfg, tmp_path / "out")
    assert calls == [(0, 3), (1, 2), (2, 1), (3, 1)]
    assert m["n"] == 3
    assert m["accuracy"] == pytest.approx(1 / 3)  # Q1's retry answered D, gold B
    assert m["failure_rate"] == pytest.approx(1 / 3)
    assert m["per_subject"]["anatomy"]["accuracy"] == 0.5 and m["per_subject"]["philosophy"]["n"] == 1
    assert m["per_category"] == {
        "STEM": {"accuracy": 0.5, "stderr": 0.5, "n": 2},
        "humanities": {"accuracy": 0.0, "stderr": 0.0, "n": 1},
    }
    recs = json.loads((tmp_path / "out" / "mmmlu-de.json").read_text())["records"]
    assert [r["attempts"] for r in recs] == [1, 2, 4]
    assert recs[2]["failed"] and recs[2]["pred"] is None and not recs[2]["correct"]
    # resumed from the cache: nothing is generated again
    calls.clear()
    assert evaluate("mmmlu", (tiny_model("llama", vocab_size=512), tiny_tokenizer()), cfg, tmp_path / "out") == m
    assert calls == []


def test_bad_answer_names_file_line_field(tmp_path):
    (tmp_path / "mmlu").mkdir()
    (tmp_path / "mmlu" / "mmlu_EN-US.csv").write_text(
        ",Question,A,B,C,D,Answer,Subject\n0,Q,a,b,c,d,A,x\n1,Q,a,b,c,d,E,x\n", encoding="utf-8")
    from clo import languages

    with pytest.raises(ValueError, match=r"mmlu_EN-US.csv:3: field 'Answer' must be one of A-D, got 'E'"):
        mmmlu.load_rows(languages.get("en"), tmp_path)


def test_every_subject_of_the_local_file_has_a_category(shared_data):
    from clo import languages

    subjects = {r["Subject"] for r in mmmlu.load_rows(languages.get("en"), shared_data)}
    assert len(subjects) == 57 and subjects <= set(mmmlu.SUBJECT_CATEGORY)


def test_no_questions_gives_null_metrics_and_the_reason(tmp_path):
    """A file with no rows: null rates (strict JSON, no NaN) and why."""
    (tmp_path / "mmlu").mkdir()
    (tmp_path / "mmlu" / "mmlu_DE-DE.csv").write_text(",Question,A,B,C,D,Answer,Subject\n", encoding="utf-8")
    from clo.testing import tiny_model, tiny_tokenizer

    cfg = load_config(None, [f"eval.data_dir={tmp_path}", "lang=de"])
    m = evaluate("mmmlu", (tiny_model("llama", vocab_size=512), tiny_tokenizer()), cfg, tmp_path / "out")

    def no_nan(s):
        raise ValueError(s)

    doc = json.loads((tmp_path / "out" / "mmmlu-de.json").read_text(), parse_constant=no_nan)
    assert doc["metrics"] == m
    assert (m["accuracy"], m["stderr"], m["failure_rate"], m["n"]) == (None, None, None, 0)
    assert m["reason"] == "no questions"


# ---------------------------------------------------------------------------------------------
# Generation budget and stop strings


def test_stop_strings_are_the_answer_line_asked_for():
    from clo import languages

    for code in languages.known():
        lang = languages.get(code)
        stops = mmmlu.stop_strings(lang)
        assert f"{lang.answer_word}: B\n" in stops and "Answer: D\n" in stops
        assert (f"{lang.answer_word}：C\n" in stops) and (f"{lang.answer_word}:A\n" in stops)
        assert all(s.endswith("\n") for s in stops)
        # the response cut at a stop string reads as that answer
        for s in stops:
            assert extract_answer("Let me think step by step.\n" + s.strip()) == s.strip()[-1]
    assert "答案：A\n" in mmmlu.stop_strings(languages.get("zh"))
    assert len(mmmlu.stop_strings(languages.get("en"))) == 12


def _two_questions(tmp_path):
    (tmp_path / "mmlu").mkdir(exist_ok=True)
    (tmp_path / "mmlu" / "mmlu_DE-DE.csv").write_text(
        ",Question,A,B,C,D,Answer,Subject\n0,Q0,a,b,c,d,A,anatomy\n1,Q1,a,b,c,d,B,anatomy\n", encoding="utf-8")


def test_mmmlu_budget_and_stop_strings_reach_the_generator(tmp_path, monkeypatch):
    from clo.testing import tiny_model, tiny_tokenizer

    _two_questions(tmp_path)
    seen = []

    def scripted(model, tok, prompts, **kw):
        seen.append((kw["max_new_tokens"], kw["stop"]))
        yield list(range(len(prompts))), ["Antwort: A"] * len(prompts)

    monkeypatch.setattr("clo.eval.generation.iter_generate", scripted)
    model = (tiny_model("llama", vocab_size=512), tiny_tokenizer())
    base = [f"eval.data_dir={tmp_path}", "lang=de", "eval.max_new_tokens=77"]
    evaluate("mmmlu", model, load_config(None, base), tmp_path / "a")
    evaluate("mmmlu", model, load_config(None, [*base, "eval.mmmlu_max_new_tokens=640"]), tmp_path / "b")
    evaluate("mmmlu", model, load_config(None, [*base, "eval.mmmlu_max_new_tokens=640"]), tmp_path / "c",
             max_new_tokens=32)
    from clo import languages

    assert [b for b, _ in seen] == [77, 640, 32]
    assert all(stop == mmmlu.stop_strings(languages.get("de")) for _, stop in seen)
    fp = [json.loads((tmp_path / d / "mmmlu-de.json").read_text())["fingerprint"]["inputs"] for d in "ab"]
    assert (fp[0]["eval"]["mmmlu_max_new_tokens"], fp[1]["eval"]["mmmlu_max_new_tokens"]) == (None, 640)


def test_mmmlu_budget_is_not_in_other_tasks_fingerprints(tmp_path, monkeypatch):
    """Changing MMMLU's budget must not throw away another task's cache (AlpacaEval's holds paid
    verdicts); neither do the judge's concurrency and rate caps or the batch token budget."""
    from clo.testing import tiny_model, tiny_tokenizer

    monkeypatch.setattr("clo.eval.fidelity._detect", lambda texts: ["de"] * len(texts))
    model = (tiny_model("llama", vocab_size=512), tiny_tokenizer())
    heads = []
    for extra in ([], ["eval.mmmlu_max_new_tokens=640", "eval.judge.concurrency=3", "eval.judge.rpm=60",
                       "eval.judge.tpm=1000", "eval.batch_tokens=999"]):
        evaluate("fidelity", model, load_config(None, ["lang=de", "eval.max_new_tokens=2", *extra]), tmp_path,
                 prompts=["Hallo"])
        heads.append((tmp_path / "fidelity-de.cache.jsonl").read_text().splitlines()[0])
    assert heads[0] == heads[1]
    assert "mmmlu_max_new_tokens" not in heads[0] and "concurrency" not in heads[0]


# ---------------------------------------------------------------------------------------------
# Hard cases in every language the registry has an MMMLU prompt for. Reading rule: the last
# answer line ("<answer word>: X", the form the prompt asks for) wins over later mentions; a
# lower-case letter followed by a comma or dash is the answer; zero-width characters are
# invisible.

# Per language: (", since the others are wrong", "is wrong") as a model would continue.
PHRASES = {
    "en": ("since the others are wrong", "is wrong"),
    "de": ("da die anderen falsch sind", "ist falsch"),
    "fr": ("car les autres sont fausses", "est fausse"),
    "es": ("porque las demás son incorrectas", "es incorrecta"),
    "it": ("perché le altre sono sbagliate", "è sbagliata"),
    "pt": ("porque as outras estão erradas", "está errada"),
    "id": ("karena yang lain salah", "salah"),
    "sw": ("kwa sababu nyingine si sahihi", "si sahihi"),
    "yo": ("nítorí pé àwọn yòókù kò tọ̀nà", "kò tọ̀nà"),
    "zh": ("因为其他选项都不对", "是错的"),
    "ja": ("他の選択肢は誤りだからです", "は誤りです"),
    "ko": ("다른 선택지는 틀렸기 때문입니다", "는 틀렸습니다"),
    "ar": ("لأن الخيارات الأخرى خاطئة", "خاطئة"),
    "bn": ("কারণ অন্যগুলো ভুল", "ভুল"),
    "hi": ("क्योंकि बाकी गलत हैं", "गलत है"),
    "ru": ("так как остальные неверны", "неверен"),
    "tr": ("çünkü diğerleri yanlış", "yanlış"),
    "vi": ("vì các đáp án khác sai", "sai"),
}


def _mmmlu_languages():
    from clo import languages

    return [c for c in languages.known() if "mmmlu" in languages.get(c).native_prompts]


def test_hard_cases_cover_every_language_with_an_mmmlu_prompt():
    assert set(_mmmlu_languages()) == set(PHRASES)


@pytest.mark.parametrize("code", sorted(PHRASES))
def test_hard_cases_in_every_language(code):
    from clo import languages

    w = languages.get(code).answer_word
    because, wrong = PHRASES[code]
    # the answer line wins over a later mention of an option
    assert extract_answer(f"...\n{w}: C\n{w} A {wrong}.") == "C"
    assert extract_answer(f"{w}: C\n\n{w} B {wrong}, {w} D {wrong}.") == "C"
    # a lower-case letter followed by a comma or a dash
    assert extract_answer(f"{w}: a, {because}.") == "A"
    assert extract_answer(f"{w}: d - {because}.") == "D"
    assert extract_answer(f"{w}: b – {because}.") == "B"
    # a zero-width space (or word joiner) after the colon
    assert extract_answer(f"{w}:\u200bB") == "B"
    assert extract_answer(f"{w}:\u200b C\n") == "C"
    assert extract_answer(f"{w}:\u2060D") == "D"
    # several letters listed are no answer; a mention alone names an option, not the answer
    assert extract_answer(f"{w}: b, c") is None
    assert extract_answer(f"{w} A {wrong}.") is None


@pytest.mark.parametrize("text,expected", [
    ("Answer: C\nSome would say the answer is A, but that is wrong.", "C"),
    ("Antwort: C\nAntwort A ist falsch, weil ...", "C"),
    ("Answer: a, since the other options contradict the premise.", "A"),
    ("Answer: c — the others are wrong", "C"),
    ("Answer: b, c or d", None),
    ("Answer: B/C", None),
    ("The answer is C.\nAnswer A is wrong.", "C"),            # no answer line: the copula form
    ("Final answer B.", "B"),                                 # a letter that ends the sentence
    # Korean particles and counters after the letter
    ("정답은 B번입니다.", "B"),
    ("답변: B가 정답입니다.", "B"),
    ("답변: C를 선택합니다.", "C"),
    ("정답은 D입니다", "D"),
    ("답변: b번", "B"),
    ("답: 나는 잘 모르겠다.", None),                          # 나는 = "I", not option 나
    ("답변 A는 틀렸습니다.", None),
    # Japanese topic particle and copula
    ("答えはBです。", "B"),
    ("答え：Ｃ", "C"),
])
def test_hard_cases(text, expected):
    assert extract_answer(text) == expected
