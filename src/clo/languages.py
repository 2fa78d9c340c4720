"""The language registry: one entry per language, every resource's code and every prompt text.

The API names languages by ISO 639-1 code (``de``, ``sw``); each resource has its own code
(FLORES/BELEBELE ``swh_Latn``, MMMLU ``SW_KE``, M2M100 ``sw``, NLLB-200 ``swh_Latn``) and all of
those mappings live here, so no other module spells a language code.

Add a language with :func:`register`; any FLORES-200 language fits the same fields::

    from clo import languages
    languages.register(languages.Language(
        code="fr", name="French", native_name="Français", script="Latn",
        flores="fra_Latn", mmmlu="FR_FR", m2m100="fr", nllb="fra_Latn",
        belebele=languages.BelebeleLabels("Document", "Question", ("A", "B", "C", "D"), "Réponse"),
        mmmlu_instruction=..., answer_word="Réponse", answer_in_language="Veuillez répondre en français.",
    ))
"""

from __future__ import annotations

from dataclasses import dataclass

# The MMMLU instruction follows OpenAI simple-evals' English template; every language keeps the
# "{answer_word}: $LETTER" contract so that the extractor knows what to look for.
_MMMLU_EN = (
    "Answer the following multiple choice question. The last line of your response should be of the "
    "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by "
    "step before answering."
)


@dataclass(frozen=True)
class BelebeleLabels:
    """Prompt labels of the language-specific BELEBELE template (paper, Table 7)."""

    passage: str
    question: str
    options: tuple[str, str, str, str]
    answer: str


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1, the name used everywhere in the API
    name: str  # English name
    native_name: str
    script: str  # ISO 15924
    flores: str  # FLORES-200 / BELEBELE config
    mmmlu: str | None  # openai/MMMLU config (None: English, which MMMLU ships as plain MMLU)
    m2m100: str | None  # M2M100 language code (None: not covered by M2M100)
    nllb: str  # NLLB-200 language code (FLORES-200 style)
    belebele: BelebeleLabels
    mmmlu_instruction: str  # asks for a last line "<answer_word>: $LETTER"
    answer_word: str
    answer_in_language: str  # "please answer in <this language>", written in the language itself


_REGISTRY: dict[str, Language] = {}


def register(language: Language, *, replace: bool = False) -> Language:
    if language.code in _REGISTRY and not replace:
        raise ValueError(f"language {language.code!r} is already registered (pass replace=True)")
    _REGISTRY[language.code] = language
    return language


def get(code: str) -> Language:
    """The registry entry of an ISO 639-1 code; an unknown code lists the known ones."""
    key = code.strip().lower() if isinstance(code, str) else code
    try:
        return _REGISTRY[key]
    except KeyError:
        raise KeyError(
            f"unknown language code {code!r}; known: {', '.join(sorted(_REGISTRY))} "
            "(add one with clo.languages.register)"
        ) from None


def known() -> list[str]:
    return sorted(_REGISTRY)


def by_flores(flores_code: str) -> Language:
    for lang in _REGISTRY.values():
        if lang.flores == flores_code:
            return lang
    raise KeyError(f"no registered language has FLORES code {flores_code!r}; known: {known()}")


_ABCD = ("A", "B", "C", "D")

register(Language(
    code="en", name="English", native_name="English", script="Latn",
    flores="eng_Latn", mmmlu=None, m2m100="en", nllb="eng_Latn",
    belebele=BelebeleLabels("Passage", "Question", _ABCD, "Answer"),
    mmmlu_instruction=_MMMLU_EN, answer_word="Answer",
    answer_in_language="Please answer in English.",
))
register(Language(
    code="zh", name="Chinese", native_name="中文", script="Hans",
    flores="zho_Hans", mmmlu="ZH_CN", m2m100="zh", nllb="zho_Hans",
    belebele=BelebeleLabels("文档", "问题", _ABCD, "答案"),
    mmmlu_instruction=(
        "回答下面的单项选择题。你的回答的最后一行应采用以下格式：'答案: $LETTER'（不带引号），"
        "其中 LETTER 是 ABCD 中的一个。回答前请逐步思考。"
    ),
    answer_word="答案",
    answer_in_language="请用中文回答。",
))
register(Language(
    code="de", name="German", native_name="Deutsch", script="Latn",
    flores="deu_Latn", mmmlu="DE_DE", m2m100="de", nllb="deu_Latn",
    belebele=BelebeleLabels("Dokument", "Frage", _ABCD, "Antwort"),
    mmmlu_instruction=(
        "Beantworte die folgende Multiple-Choice-Frage. Die letzte Zeile deiner Antwort sollte folgendes "
        "Format haben: 'Antwort: $LETTER' (ohne Anführungszeichen), wobei LETTER einer der Buchstaben "
        "ABCD ist. Denke Schritt für Schritt nach, bevor du antwortest."
    ),
    answer_word="Antwort",
    answer_in_language="Bitte antworte auf Deutsch.",
))
register(Language(
    code="ko", name="Korean", native_name="한국어", script="Hang",
    flores="kor_Hang", mmmlu="KO_KR", m2m100="ko", nllb="kor_Hang",
    belebele=BelebeleLabels("문서", "질문", ("가)", "나)", "다)", "라)"), "정답"),
    mmmlu_instruction=(
        "다음 객관식 질문에 답하세요. 응답의 마지막 줄은 다음 형식이어야 합니다: '답변: $LETTER' "
        "(따옴표 제외). 여기서 LETTER는 ABCD 중 하나입니다. 답하기 전에 단계별로 생각하세요."
    ),
    answer_word="답변",
    answer_in_language="한국어로 답변해 주세요.",
))
register(Language(
    code="id", name="Indonesian", native_name="Bahasa Indonesia", script="Latn",
    flores="ind_Latn", mmmlu="ID_ID", m2m100="id", nllb="ind_Latn",
    belebele=BelebeleLabels("Dokumen", "Pertanyaan", _ABCD, "Jawaban"),
    mmmlu_instruction=(
        "Jawablah pertanyaan pilihan ganda berikut. Baris terakhir dari jawaban Anda harus berformat: "
        "'Jawaban: $LETTER' (tanpa tanda kutip) di mana LETTER adalah salah satu dari ABCD. Berpikirlah "
        "langkah demi langkah sebelum menjawab."
    ),
    answer_word="Jawaban",
    answer_in_language="Silakan jawab dalam bahasa Indonesia.",
))
register(Language(
    code="sw", name="Swahili", native_name="Kiswahili", script="Latn",
    flores="swh_Latn", mmmlu="SW_KE", m2m100="sw", nllb="swh_Latn",
    belebele=BelebeleLabels("Hati", "Swali", _ABCD, "Jibu"),
    mmmlu_instruction=(
        "Jibu swali lifuatalo la chaguo nyingi. Mstari wa mwisho wa jibu lako unapaswa kuwa katika muundo "
        "huu: 'Jibu: $LETTER' (bila alama za nukuu) ambapo LETTER ni mojawapo ya ABCD. Fikiri hatua kwa "
        "hatua kabla ya kujibu."
    ),
    answer_word="Jibu",
    answer_in_language="Tafadhali jibu kwa Kiswahili.",
))
register(Language(
    code="yo", name="Yoruba", native_name="Èdè Yorùbá", script="Latn",
    flores="yor_Latn", mmmlu="YO_NG", m2m100="yo", nllb="yor_Latn",
    belebele=BelebeleLabels("Iwe", "Ibéèrè", _ABCD, "Idahun"),
    mmmlu_instruction=(
        "Dáhùn ìbéèrè aláṣàyàn yìí. Ìlà tó kẹ́yìn nínú ìdáhùn rẹ gbọ́dọ̀ wà ní ọ̀nà yìí: 'Idahun: $LETTER' "
        "(láìsí àmì àyọlò) níbi tí LETTER jẹ́ ọ̀kan lára ABCD. Ronú ní ìgbésẹ̀-ìgbésẹ̀ kí o tó dáhùn."
    ),
    answer_word="Idahun",
    answer_in_language="Jọ̀wọ́ dáhùn ní èdè Yorùbá.",
))
