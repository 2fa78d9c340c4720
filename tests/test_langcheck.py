"""The language checks measured on human-written text (bench/langcheck.py on a slice of BELEBELE
and the Language Confusion Benchmark), language ID abstaining on short text, the numbers check,
and the adequacy check with a tiny random sentence encoder."""

import importlib.util
import math
from pathlib import Path

import pytest

from clo.config import load_config
from clo.data.checks import adequacy_scores, check_pair, check_record, missing_numbers, numbers

ROOT = Path(__file__).resolve().parents[1]
CFG = load_config(None, []).data.checks


def _bench():
    spec = importlib.util.spec_from_file_location("langcheck_bench", ROOT / "bench" / "langcheck.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_short_text_abstains_instead_of_guessing():
    # One or two words: language ID abstains (lang None), the check passes.
    for text, lang in (("Mieux dormir.", "fr"), ("Lehrmaterial", "de"), ("Bankette", "de"),
                       ("Polymorphe", "de"), ("77.0°F", "de")):
        values, reasons = check_pair("y_tgt", text, text, lang, CFG)
        assert values["lang"] is None and reasons == [], (text, values, reasons)
    # Long enough, the wrong language is rejected and the right one passes.
    values, reasons = check_pair("y_tgt", "Sleep better.", "Duerme mejor por la noche con estos consejos.", "fr", CFG)
    assert values["lang"] == "es" and values["lang_prob"] < CFG.langid_min_prob and reasons == ["lang_y_tgt"]
    values, reasons = check_pair("y_tgt", "Sleep better at night with these tips.",
                                 "Dormez mieux la nuit grâce à ces conseils.", "fr", CFG)
    assert values["lang"] == "fr" and values["lang_prob"] > 0.5 and reasons == []
    # Chinese has no spaces: the word count does not apply, the letters do.
    assert check_pair("y_tgt", "What is the capital of Italy?", "意大利的首都是哪里？", "zh", CFG)[0]["lang"] == "zh"


def test_numbers_check():
    assert numbers("In 2011, 1,000 people; ٣ more") == {"2011": 1, "1": 1, "000": 1, "3": 1}
    assert missing_numbers("No numbers here.", "Keine Zahlen.") is None
    assert missing_numbers("He was born in 1879 and died in 1955.", "Er wurde 1879 geboren.") == 0.5
    assert missing_numbers("Costs 3.5 million in 2011.", "Kostet 3,5 Millionen im Jahr 2011.") == 0.0
    c = check_record("Who won in 1998?", "France won the 1998 World Cup 3-0.",
                     "Wer gewann 1998?", "Brasilien gewann die Weltmeisterschaft im Jahr 2002.", "de", CFG)
    assert c["reasons"] == ["numbers_y_tgt"] and c["y_tgt"]["numbers_missing"] == 1.0


def test_bench_on_a_slice_meets_the_goals(shared_data):
    bench = _bench()
    lo, hi = bench.wilson(0, 10)
    assert lo == 0.0 and math.isclose(hi, 1.96 ** 2 / (10 + 1.96 ** 2), rel_tol=1e-9)
    res = bench.run(Path(shared_data), CFG, limit=30, per_lang=40)
    pooled = {part: bench._pooled(res[part]) for part in ("correct", "wrong_language", "mismatched")}
    k, n = pooled["correct"]
    # 30 BELEBELE rows: 30 questions, 120 answers, their passages; 30 prompts in each of 14 languages.
    by_group = {}
    for r in res["correct"]:
        by_group[r["group"]] = by_group.get(r["group"], 0) + r["n"]
    assert by_group["belebele-question"] == 30 and by_group["belebele-answer"] == 120
    assert by_group["lcb-native"] == 14 * 30 and 1 <= by_group["belebele-passage"] <= 30
    assert k / n <= 0.02, res["correct"]
    k, n = pooled["wrong_language"]
    assert n > 500 and k / n >= 0.95, res["wrong_language"]
    # Mismatched pairs: without an encoder only numbers and lengths see them (measured, not a goal met).
    groups = {r["group"]: r for r in res["mismatched"]}
    assert groups["belebele-passage-mismatched"]["reasons"].get("numbers", 0) > 0
    md = bench.markdown(res)
    assert "| **all** |" in md and "belebele-question" in md


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    from transformers import BertConfig, BertModel

    from clo.testing import tiny_tokenizer

    d = tmp_path_factory.mktemp("encoder")
    tok = tiny_tokenizer(chat_template=False)
    import torch

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _mean_pooled_cosine(model_dir, a: str, b: str) -> float:
    """An independent computation: transformers' AutoModel, mean pooling over the mask, cosine."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    vecs = []
    for text in (a, b):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state[0]
        m = enc["attention_mask"][0].unsqueeze(-1).float()
        vecs.append((h * m).sum(0) / m.sum())
    return float(torch.nn.functional.cosine_similarity(vecs[0], vecs[1], dim=0))


def test_adequacy_check_with_a_tiny_encoder(tiny_encoder):
    src, good, bad = "What is the capital of Italy?", "Was ist die Hauptstadt Italiens?", "zzzz qqqq xxxx"
    sims = adequacy_scores([src, src, src], [src, good, bad], str(tiny_encoder))
    assert sims[0] == pytest.approx(1.0, abs=1e-4)
    assert sims[1] == pytest.approx(_mean_pooled_cosine(tiny_encoder, src, good), abs=1e-3)
    assert sims[2] == pytest.approx(_mean_pooled_cosine(tiny_encoder, src, bad), abs=1e-3)
    # The threshold between the two scores: the lower one is rejected, the higher one passes.
    lo, hi = sorted(sims[1:])
    cfg = load_config(None, [f"data.checks.adequacy_model={tiny_encoder}",
                             f"data.checks.adequacy_min={(lo + hi) / 2}", "data.checks.langid=false"]).data.checks
    for sim in (lo, hi):
        values, reasons = check_pair("y_tgt", src, good, "de", cfg, similarity=sim)
        assert values["similarity"] == sim and reasons == ([] if sim == hi else ["adequacy_y_tgt"])
    # Through clo data check's path (records translated elsewhere): scores computed per record.
    from clo.data.checks import check_records
    from clo.data.records import CrossLingualRecord

    recs = [CrossLingualRecord(id=str(i), tgt_lang="de", x_en=src, y_en=src, x_tgt=t, y_tgt=t, source="x", meta={})
            for i, t in enumerate((good, bad))]
    accepted, rejects = check_records(recs, cfg)
    want_bad = sims[2] < sims[1]
    assert [r["id"] for r in rejects] == (["1"] if want_bad else ["0"])
    assert [r.id for r in accepted] == (["0"] if want_bad else ["1"])
    assert rejects[0]["reasons"] == ["adequacy_x_tgt", "adequacy_y_tgt"]
    with pytest.raises(ValueError, match="adequacy_model: cannot load"):
        adequacy_scores(["a"], ["b"], str(tiny_encoder / "missing"))
