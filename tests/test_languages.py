import json

import pytest

from clo import languages

SEVEN = ["en", "zh", "de", "ko", "id", "sw", "yo"]

# The paper's Table 7.
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
    tlh = languages.Language(
        code="tlh", name="Klingon", native_name="tlhIngan Hol", script="Latn", flores="tlh_Latn",
        mmmlu=None, m2m100=None, nllb=None,
        belebele=languages.BelebeleLabels("ghItlh", "ghel", ("A", "B", "C", "D"), "jang"),
        mmmlu_instruction="... 'jang: $LETTER' ... ABCD", answer_word="jang",
        answer_in_language="tlhIngan Hol yIjang.",
    )
    try:
        languages.register(tlh)
        assert languages.get("TLH") is tlh and languages.by_flores("tlh_Latn") is tlh
        assert tlh.belebele_config is None and tlh.langid == ("tlh",) and tlh.prompt_texts == "native"
        with pytest.raises(ValueError, match="already registered"):
            languages.register(tlh)
    finally:
        languages._REGISTRY.pop("tlh", None)


# ---------------------------------------------------------------------------------------------
# The shipped registry (languages.yaml)

# facebook/belebele's 122 configs, M2M100's 100 codes, MMMLU's 14 locales, LCB's 15 languages.
MMMLU = {"ar": "AR_XY", "bn": "BN_BD", "de": "DE_DE", "es": "ES_LA", "fr": "FR_FR", "hi": "HI_IN", "id": "ID_ID",
         "it": "IT_IT", "ja": "JA_JP", "ko": "KO_KR", "pt": "PT_BR", "sw": "SW_KE", "yo": "YO_NG", "zh": "ZH_CN"}
LCB = ["ar", "de", "en", "es", "fr", "hi", "id", "it", "ja", "ko", "pt", "ru", "tr", "vi", "zh"]
M2M100 = ["af", "am", "ar", "ast", "az", "ba", "be", "bg", "bn", "br", "bs", "ca", "ceb", "cs", "cy", "da", "de", "el", "en", "es", "et", "fa", "ff", "fi", "fr", "fy", "ga", "gd", "gl", "gu", "ha", "he", "hi", "hr", "ht", "hu", "hy", "id", "ig", "ilo", "is", "it", "ja", "jv", "ka", "kk", "km", "kn", "ko", "lb", "lg", "ln", "lo", "lt", "lv", "mg", "mk", "ml", "mn", "mr", "ms", "my", "ne", "nl", "no", "ns", "oc", "or", "pa", "pl", "ps", "pt", "ro", "ru", "sd", "si", "sk", "sl", "so", "sq", "sr", "ss", "su", "sv", "sw", "ta", "th", "tl", "tn", "tr", "uk", "ur", "uz", "vi", "wo", "xh", "yi", "yo", "zh", "zu"]


def test_every_belebele_language_is_registered():
    configs = languages.belebele_configs()
    assert len(configs) == 122 and {"eng_Latn", "deu_Latn", "tha_Thai", "amh_Ethi", "tgl_Latn", "hin_Deva",
                                    "vie_Latn", "zho_Hant", "arb_Latn"} <= configs
    shipped = [lang for lang in languages.all_languages() if lang.belebele_config]
    assert sorted(lang.belebele_config for lang in shipped) == sorted(configs)
    assert all(lang.belebele_config == lang.flores for lang in shipped)
    for code in ("am", "th", "vi", "tl", "hi", "fr", "zh-Hant", "ceb", "acm"):
        assert languages.get(code).belebele_config


def test_resource_codes_of_the_registry():
    langs = languages.all_languages()
    assert {lang.code: lang.mmmlu for lang in langs if lang.mmmlu} == MMMLU
    assert sorted(lang.lcb for lang in langs if lang.lcb) == sorted(LCB)
    assert all(lang.lcb in (None, lang.code) for lang in langs)
    assert all(lang.m2m100 is None or lang.m2m100 in M2M100 for lang in langs)
    m2m = [lang.m2m100 for lang in langs if lang.m2m100]
    assert len(m2m) == len(set(m2m)) >= 70
    # NLLB-200 uses FLORES-200 codes; the romanized BELEBELE variants are not NLLB languages.
    assert all(lang.nllb in (None, lang.flores) for lang in langs)
    assert {lang.code for lang in langs if lang.nllb is None} == {"ar-Latn", "bn-Latn", "hi-Latn", "ne-Latn",
                                                                  "si-Latn", "ur-Latn"}
    assert languages.get("nb").m2m100 == "no" and languages.get("nb").langid == ("no",)  # YAML's `no` trap
    assert languages.get("zh-Hant").langid == ("zh",) and languages.get("acm").langid == ("ar",)
    assert languages.get("ha").langid == ()  # no detector label: the language check passes


def test_prompt_texts_native_or_english():
    th = languages.get("th")
    assert th.prompt_texts == "English" and not th.native_prompts
    assert th.belebele == languages.ENGLISH_LABELS and th.answer_word == "Answer"
    assert th.mmmlu_instruction == languages.get("en").mmmlu_instruction
    assert th.answer_in_language == "Please answer in Thai."
    for code in [*SEVEN, *MMMLU]:
        lang = languages.get(code)
        assert lang.prompt_texts == "native", code
        assert f"{lang.answer_word}: $LETTER" in lang.mmmlu_instruction and "ABCD" in lang.mmmlu_instruction
    assert languages.get("fr").answer_word == "Réponse" and languages.get("ja").belebele.answer == "答え"


def test_task_data_and_translators():
    assert languages.task_data(languages.get("de")) == {
        "belebele": "deu_Latn", "mmmlu": "DE_DE", "alpacaeval": "translated", "fidelity": "de", "confusion": "de"}
    assert languages.task_data(languages.get("en"))["mmmlu"] == "EN_US"
    th = languages.task_data(languages.get("th"))
    assert th["belebele"] == "tha_Thai" and th["mmmlu"] is None and th["confusion"] is None
    tr = languages.translators(languages.get("sw"))
    assert tr["m2m100"] == "sw" and tr["nllb"] == "swh_Latn" and tr["causal"] == "sw" and tr["openai"] == "sw"
    assert languages.translators(languages.get("kac"))["m2m100"] is None


# ---------------------------------------------------------------------------------------------
# User files


@pytest.fixture
def restore_registry():
    reg, entries = dict(languages._REGISTRY), dict(languages._ENTRIES)
    yield
    languages._REGISTRY.clear(), languages._REGISTRY.update(reg)
    languages._ENTRIES.clear(), languages._ENTRIES.update(entries)


def test_user_file_adds_and_overrides(tmp_path, restore_registry):
    f = tmp_path / "langs.yaml"
    f.write_text("""languages:
  th:
    prompts:
      answer_in_language: "กรุณาตอบเป็นภาษาไทย"
  sw:
    lcb: sw
  tlh:
    name: Klingon
    flores: tlh_Latn
    langid: []
""", encoding="utf-8")
    made = languages.load_file(f)
    assert [lang.code for lang in made] == ["th", "sw", "tlh"]
    th = languages.get("th")
    assert th.answer_in_language == "กรุณาตอบเป็นภาษาไทย" and th.flores == "tha_Thai" and th.m2m100 == "th"
    assert th.prompt_texts == "partial (native: answer_in_language)" and th.answer_word == "Answer"
    sw = languages.get("sw")
    assert sw.lcb == "sw" and sw.belebele.passage == "Hati" and sw.mmmlu == "SW_KE"  # the rest kept
    tlh = languages.get("tlh")
    assert (tlh.name, tlh.native_name, tlh.script, tlh.belebele_config, tlh.langid) == (
        "Klingon", "Klingon", "Latn", None, ())
    # A second override of the same entry merges over the first.
    f.write_text("th:\n  native_name: ไทย\n", encoding="utf-8")
    languages.load_file(f)
    assert languages.get("th").native_name == "ไทย" and languages.get("th").answer_in_language == "กรุณาตอบเป็นภาษาไทย"


def test_user_file_errors_name_file_and_key(tmp_path, restore_registry):
    f = tmp_path / "bad.yaml"
    f.write_text("""languages:
  tlh:
    name: Klingon
  xq:
    name: X
    flores: x
    m2m100: no
    colour: blue
  de:
    prompts:
      mmmlu: {instruction: "Antworte.", answer_word: Antwort}
""", encoding="utf-8")
    with pytest.raises(languages.ConfigError) as e:
        languages.load_file(f)
    msg = str(e.value)
    assert f"{f}: tlh.flores: Field required" in msg
    assert f"{f}: xq.flores: Value error, expected a FLORES-200 code" in msg
    assert f"{f}: xq.m2m100: Value error, got the boolean False: YAML reads no" in msg
    assert f"{f}: xq.colour: unknown key" in msg
    assert f"{f}: de.prompts.mmmlu: Value error, the instruction must contain 'Antwort: $LETTER'" in msg
    assert "tlh" not in languages.known() and languages.get("de").mmmlu_instruction.startswith("Beantworte")
    f.write_text("no:\n  name: N\n")
    with pytest.raises(languages.ConfigError, match="not a language code.*booleans: quote it"):
        languages.load_file(f)
    with pytest.raises(languages.ConfigError, match="no such languages file"):
        languages.load_file(tmp_path / "missing.yaml")
    f.write_text("languages: [de]\n")
    with pytest.raises(languages.ConfigError, match="top level must be a mapping|not a language code"):
        languages.load_file(f)


def test_env_variable_files_are_loaded(tmp_path, restore_registry, monkeypatch):
    f = tmp_path / "l.yaml"
    f.write_text("tlh: {name: Klingon, flores: tlh_Latn}\n")
    monkeypatch.setenv(languages.ENV_VAR, str(f))
    assert [lang.code for lang in languages.load_env()] == ["tlh"]


def test_config_accepts_any_registered_language():
    from clo.config import load_config

    assert load_config(None, ["lang=th"]).lang == "th"
    assert load_config(None, ["lang=ZH-hant"]).lang == "zh-Hant"


def test_cli_languages(tmp_path, capsys, restore_registry):
    from clo.cli import main

    assert main(["languages"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["code", "name", "FLORES", "M2M100", "NLLB", "MMMLU", "LCB", "prompts", "tasks", "translators"]
    th = next(line for line in out.splitlines() if line.startswith("th "))
    assert "tha_Thai" in th and "English" in th and "belebele" in th and "m2m100" in th and "mmmlu" not in th
    assert "122 languages" in out
    assert main(["languages", "th", "de"]) == 0
    out = capsys.readouterr().out
    assert "th: Thai" in out and "English, no native text known" in out and "de: German (Deutsch)" in out
    assert main(["languages", "--task", "mmmlu", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["code"] for r in rows) == sorted([*MMMLU, "en"])
    f = tmp_path / "l.yaml"
    f.write_text("tlh: {name: Klingon, flores: tlh_Latn}\n")
    assert main(["languages", "--languages", str(f), "tlh"]) == 0
    assert "tlh: Klingon" in capsys.readouterr().out
    assert main(["languages", "xx"]) == 2
    assert "unknown language code 'xx'" in capsys.readouterr().err
    f.write_text("qaa: {name: Private use}\n")
    assert main(["languages", "--languages", str(f)]) == 2
    assert f"clo languages: error: {f}: qaa.flores: Field required" in capsys.readouterr().err
