"""The built-in few-shot examples of the ``causal`` translator (:mod:`clo.data.translators.causal`),
in a module that imports nothing, so that :mod:`clo.languages` lists which languages have them
without importing the translators."""

from __future__ import annotations

# Parallel example sentences: the few-shot prompt for src->tgt takes FEW_SHOT[src][i] ->
# FEW_SHOT[tgt][i]. Short, everyday, one line each, as the segments are.
FEW_SHOT: dict[str, tuple[str, ...]] = {
    "en": ("How do I make a good cup of tea?", "Water boils at 100 degrees Celsius.",
           "Here are three tips for better sleep:"),
    "de": ("Wie mache ich eine gute Tasse Tee?", "Wasser kocht bei 100 Grad Celsius.",
           "Hier sind drei Tipps für besseren Schlaf:"),
    "zh": ("我怎样才能泡一杯好茶？", "水在摄氏100度时沸腾。", "以下是改善睡眠的三个建议："),
    "ko": ("맛있는 차 한 잔은 어떻게 만드나요?", "물은 섭씨 100도에서 끓습니다.", "더 나은 수면을 위한 세 가지 팁은 다음과 같습니다:"),
    "id": ("Bagaimana cara membuat secangkir teh yang enak?", "Air mendidih pada suhu 100 derajat Celsius.",
           "Berikut tiga tips untuk tidur yang lebih nyenyak:"),
    "sw": ("Ninawezaje kutengeneza kikombe kizuri cha chai?", "Maji huchemka kwa nyuzi joto 100 za Selsiasi.",
           "Hapa kuna vidokezo vitatu vya kulala vizuri zaidi:"),
    "yo": ("Báwo ni mo ṣe lè ṣe ife tii tó dára?", "Omi máa ń hó ní ìwọ̀n ọgọ́rùn-ún Celsius.",
           "Àwọn ìmọ̀ràn mẹ́ta fún oorun tó dára jù nìyí:"),
}
