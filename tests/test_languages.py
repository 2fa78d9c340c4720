import pytest

from clo import languages

SEVEN = ["en", "zh", "de", "ko", "id", "sw", "yo"]

# DESIGN.md section 3 / paper Table 7.
TABLE7 = {
    "zh": ("文档", "问题", ("A", "B", "C", "D"), "答案"),
    "de": ("Dokument", "Frage", ("A", "B", "C", "D"), "Antwort"),
    "ko": ("문서", "질문", ("가)", "나)", "다)", "라)"), "정답"),
    "id": ("Dokumen", "Pertanyaan", ("A", "B", "C", "D"), "Jawaban"),
    "sw": ("Hati", "Swali", ("A", "B", "C", "D"), "Jibu"),
    "yo": ("Iwe", "Ibéèrè", ("A", "B", "C", "D"), "Idahun"),
}

CODES = {  # flores, mmmlu, m2m100, nllb
    "en": ("eng_Latn", None, "en", "eng_Latn"),
    "zh": ("zho_Hans", "ZH_CN", "zh", "zho_Hans"),
    "de": ("deu_Latn", "DE_DE", "de", "deu_Latn"),
    "ko": ("kor_Hang", "KO_KR", "ko", "kor_Hang"),
    "id": ("ind_Latn", "ID_ID", "id", "ind_Latn"),
    "sw": ("swh_Latn", "SW_KE", "sw", "swh_Latn"),
    "yo": ("yor_Latn", "YO_NG", "yo", "yor_Latn"),
}


@pytest.mark.parametrize("code", SEVEN)
def test_registry_complete(code):
    lang = languages.get(code)
    assert lang.code == code
    assert (lang.flores, lang.mmmlu, lang.m2m100, lang.nllb) == CODES[code]
    assert lang.name and lang.native_name and lang.script
    assert f"{lang.answer_word}: $LETTER" in lang.mmmlu_instruction
    assert "ABCD" in lang.mmmlu_instruction
    assert lang.answer_in_language


@pytest.mark.parametrize("code", sorted(TABLE7))
def test_belebele_labels_exact(code):
    b = languages.get(code).belebele
    assert (b.passage, b.question, b.options, b.answer) == TABLE7[code]


def test_answer_words_of_design():
    assert languages.get("ko").answer_word == "답변"
    assert languages.get("zh").answer_word == "答案"
    assert languages.get("en").answer_word == "Answer"
    assert languages.get("sw").answer_word == "Jibu"


def test_unknown_code_lists_known():
    with pytest.raises(KeyError) as e:
        languages.get("xx")
    msg = e.value.args[0]
    assert "'xx'" in msg and all(c in msg for c in SEVEN)


def test_register_new_language_and_lookup_by_flores():
    fr = languages.Language(
        code="fr", name="French", native_name="Français", script="Latn", flores="fra_Latn",
        mmmlu="FR_FR", m2m100="fr", nllb="fra_Latn",
        belebele=languages.BelebeleLabels("Document", "Question", ("A", "B", "C", "D"), "Réponse"),
        mmmlu_instruction="... 'Réponse: $LETTER' ... ABCD", answer_word="Réponse",
        answer_in_language="Veuillez répondre en français.",
    )
    try:
        languages.register(fr)
        assert languages.get("FR") is fr and languages.by_flores("fra_Latn") is fr
        with pytest.raises(ValueError, match="already registered"):
            languages.register(fr)
    finally:
        languages._REGISTRY.pop("fr", None)
