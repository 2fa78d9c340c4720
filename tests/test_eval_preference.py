"""The preference task (per-token log-prob preferences on held-out quadruples), paired statistics
and fidelity's echo metrics: against values computed by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

import clo.eval.preference as pref
from clo.config import load_config
from clo.data.records import CrossLingualRecord, write_records
from clo.eval import EvalDataError, evaluate
from clo.eval.paired import align, compare, paired_difference
from clo.formatting import encode_pair
from clo.testing import tiny_model, tiny_tokenizer

RECORDS = [
    ("What is the capital of France?", "Paris.", "Was ist die Hauptstadt von Frankreich?", "Paris."),
    ("Write a short poem about the sea.", "The sea is blue and wide.",
     "Schreibe ein kurzes Gedicht über das Meer.", "Das Meer ist blau und weit."),
    ("Explain how photosynthesis works.", "Plants turn light into sugar.",
     "Erkläre, wie Photosynthese funktioniert.", "Pflanzen machen aus Licht Zucker."),
]


def _records() -> list[CrossLingualRecord]:
    return [CrossLingualRecord(id=f"r{i}", tgt_lang="de", x_en=a, y_en=b, x_tgt=c, y_tgt=d)
            for i, (a, b, c, d) in enumerate(RECORDS)]


def _mean_logp(model, tok, prompt: str, response: str) -> float:
    """By hand: one unpadded forward of prompt + response, the response tokens' log-probs averaged."""
    enc = encode_pair(tok, prompt, response)
    ids = torch.tensor([enc.prompt_ids + enc.response_ids])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    p = len(enc.prompt_ids)
    picked = [float(logp[p - 1 + t, tok_id]) for t, tok_id in enumerate(enc.response_ids)]
    return sum(picked) / len(picked)


def test_preference_task_against_hand_computed_per_token_means(tmp_path, monkeypatch):
    model, tok = tiny_model("llama", vocab_size=512), tiny_tokenizer()
    path = write_records(_records(), tmp_path / "validation.jsonl")
    cfg = load_config(None, ["lang=de"])
    m = evaluate("preference", (model, tok), cfg, tmp_path / "out", held_out_file=str(path))
    recs = json.loads((tmp_path / "out" / "preference-de.json").read_text())["records"]
    assert [r["id"] for r in recs] == ["r0", "r1", "r2"]
    want = []
    for r, (x_en, y_en, x_de, y_de) in zip(recs, RECORDS):
        mean = {"tgt_tgt": _mean_logp(model, tok, x_de, y_de), "tgt_en": _mean_logp(model, tok, x_de, y_en),
                "en_en": _mean_logp(model, tok, x_en, y_en), "en_tgt": _mean_logp(model, tok, x_en, y_de)}
        for k, v in mean.items():
            assert r["logp"][k] / r["tokens"][k] == pytest.approx(v, abs=1e-5)
        assert r["tokens"]["tgt_tgt"] == len(encode_pair(tok, x_de, y_de).response_ids)
        assert r["tgt_preferred"] == (mean["tgt_tgt"] > mean["tgt_en"])
        assert r["en_preferred"] == (mean["en_en"] > mean["en_tgt"])
        assert r["nll_tgt"] == pytest.approx(-mean["tgt_tgt"], abs=1e-5)
        assert r["nll_en"] == pytest.approx(-mean["en_en"], abs=1e-5)
        assert r["margin_tgt"] == pytest.approx(mean["tgt_tgt"] - mean["tgt_en"], abs=1e-5)
        want.append(mean)
    assert m["n"] == 3
    share = sum(w["tgt_tgt"] > w["tgt_en"] for w in want) / 3
    assert m["tgt_preferred"] == pytest.approx(share)
    nll = [-w["tgt_tgt"] for w in want]
    mu = sum(nll) / 3
    assert m["nll_tgt"] == pytest.approx(mu, abs=1e-5)
    assert m["nll_tgt_stderr"] == pytest.approx(math.sqrt(sum((x - mu) ** 2 for x in nll) / 2 / 3), abs=1e-5)
    assert m["max_length"] == cfg.train.max_length and m["truncated"] == 0

    # A second run reads every item from the cache: same numbers, nothing scored.
    def no_scoring(*a, **k):
        raise AssertionError("scored although every item is cached")

    monkeypatch.setattr(pref, "_score", no_scoring)
    again = evaluate("preference", (model, tok), cfg, tmp_path / "out", held_out_file=str(path))
    assert again == m


def test_item_values_and_summary_by_hand():
    v = pref.item_values({"tgt_tgt": -6.0, "tgt_en": -12.0, "en_en": -4.0, "en_tgt": -3.0},
                         {"tgt_tgt": 3, "tgt_en": 4, "en_en": 4, "en_tgt": 3})
    # per token: tgt_tgt -2 > tgt_en -3 (preferred); en_en -1 < en_tgt -1 is not (a tie is not a preference)
    assert v == {"tgt_preferred": True, "en_preferred": False, "margin_tgt": 1.0, "margin_en": 0.0,
                 "nll_tgt": 2.0, "nll_en": 1.0}
    recs = [dict(v), {**v, "tgt_preferred": False, "nll_tgt": 4.0}]
    s = pref.summarize(recs)
    assert s["n"] == 2 and s["tgt_preferred"] == 0.5
    # SE of (1, 0): sample sd sqrt(0.5) / sqrt(2) = 0.5; of (2, 4): sqrt(2) / sqrt(2) = 1
    assert s["tgt_preferred_stderr"] == pytest.approx(0.5) and s["nll_tgt"] == 3.0
    assert s["nll_tgt_stderr"] == pytest.approx(1.0)


def test_preference_errors(tmp_path):
    model = (tiny_model("llama", vocab_size=512), tiny_tokenizer())
    cfg = load_config(None, ["lang=de"])
    with pytest.raises(EvalDataError, match="give held_out_file="):
        evaluate("preference", model, cfg, tmp_path)
    with pytest.raises(EvalDataError, match="no such held-out records file"):
        evaluate("preference", model, cfg, tmp_path, held_out_file=str(tmp_path / "nope.jsonl"))
    path = write_records(_records(), tmp_path / "v.jsonl")
    with pytest.raises(EvalDataError, match="held-out records in de, not 'ko'"):
        evaluate("preference", model, cfg, tmp_path, held_out_file=str(path), lang="ko")
    with pytest.raises(EvalDataError, match="not en"):
        evaluate("preference", model, cfg, tmp_path, held_out_file=str(path), lang="en")
    from clo import languages

    assert pref.missing_data(languages.get("de"), None, {"held_out_file": "x.jsonl"}) is None


def test_paired_difference_by_hand():
    a, b = [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]
    d = paired_difference(a, b)
    # d = (1, 0, 0, 1): mean 0.5, sample sd sqrt(1/3), SE sqrt(1/3) / 2
    assert d["mean"] == 0.5 and d["n"] == 4
    assert d["se"] == pytest.approx(math.sqrt(1 / 3) / 2)
    assert d["ci95"] == pytest.approx([0.5 - 1.959964 * d["se"], 0.5 + 1.959964 * d["se"]], abs=1e-6)
    # Pairing removes the shared item difficulty: b = a - 1 exactly, a spread of 0.
    same = paired_difference([3.0, 5.0, 9.0], [2.0, 4.0, 8.0])
    assert same["mean"] == 1.0 and same["se"] == 0.0
    assert paired_difference([], []) == {"mean": None, "se": None, "ci95": None, "n": 0}
    with pytest.raises(ValueError, match="pair them by item"):
        paired_difference([1.0], [])
    ids, x, y = align({"a": 1.0, "b": 2.0, "c": None, "d": 4.0}, {"d": 1.0, "b": 1.0, "c": 1.0})
    assert ids == ["b", "d"] and x == [2.0, 4.0] and y == [1.0, 1.0]
    assert compare({"a": 2.0, "b": 2.0}, {"a": 1.0, "b": 0.0})["mean"] == 1.5


def _scripted(responses):
    def gen(model, tok, prompts, **kw):
        yield list(range(len(prompts))), [responses[i] for i in range(len(prompts))]
    return gen


def test_fidelity_echo_metrics(tmp_path, monkeypatch):
    prompts = ["Wie heißt die Hauptstadt von Deutschland?", "Was ist ein gutes Frühstück für Kinder?",
               "Erkläre, wie Photosynthese funktioniert.", "Nenne drei Farben."]
    responses = [
        "Wie heißt die Hauptstadt von Deutschland?",  # echo (German: counted by rate)
        "Was ist ein gutes Frühstück für Kinder? Antwort:",  # contains the prompt: echo
        "Pflanzen nutzen das Licht der Sonne, um aus Wasser und Kohlendioxid Zucker herzustellen.",
        "The three colours are red, green and blue, which are all bright.",
    ]
    monkeypatch.setattr("clo.eval.generation.iter_generate", _scripted(responses))
    cfg = load_config(None, ["lang=de"])
    m = evaluate("fidelity", (tiny_model("llama", vocab_size=512), tiny_tokenizer()), cfg, tmp_path,
                 prompts=prompts)
    # 3 of 4 in German, 2 of them echoes; of the 2 other answers 1 is German
    assert m["rate"] == 0.75 and m["echo_rate"] == 0.5
    assert m["rate_excluding_echoes"] == 0.5 and m["n_excluding_echoes"] == 2
    recs = json.loads((tmp_path / "fidelity-de.json").read_text())["records"]
    assert [r["echo"] for r in recs] == [True, True, False, False]
    from clo.train.drift import echoes

    assert [echoes(p, r) for p, r in zip(prompts, responses)] == [True, True, False, False]
