"""Appendix D: MMMLU format items added to training, and left out of the MMMLU evaluation."""

import csv
import json

import pytest

from clo.config import config_from_dict, load_config
from clo.config_base import ConfigError
from clo.data import format_items as F
from clo.eval import evaluate

SUBJECTS = ["anatomy", "philosophy", "virology"]


def _mmlu(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "Question", "A", "B", "C", "D", "Answer", "Subject"])
        for i, r in enumerate(rows):
            w.writerow([i, *r])


def _data(tmp_path, n=30, misalign_at=None):
    en = [(f"Question {i}?", "a", "b", "c", "d", "ABCD"[i % 4], SUBJECTS[i % 3]) for i in range(n)]
    de = [(f"Frage {i}?", "a", "b", "c", "d", "ABCD"[i % 4], SUBJECTS[i % 3]) for i in range(n)]
    if misalign_at is not None:
        de[misalign_at] = (*de[misalign_at][:5], "ABCD"[(misalign_at + 1) % 4], de[misalign_at][6])
    _mmlu(tmp_path / "mmlu" / "mmlu_EN-US.csv", en)
    _mmlu(tmp_path / "mmlu" / "mmlu_DE-DE.csv", de)
    return tmp_path


def test_item_ids_are_a_seeded_sample():
    ids = F.item_ids(14042, 10, 0)
    assert len(set(ids)) == 10 and ids == sorted(ids, key=int) and ids == F.item_ids(14042, 10, 0)
    assert ids != F.item_ids(14042, 10, 1)
    assert F.item_ids(100, 0, 0) == []
    with pytest.raises(ConfigError, match="12 items asked for, MMMLU has 5 questions"):
        F.item_ids(5, 12, 0)


def _cfg(data_dir, **data):
    return config_from_dict({"lang": "de", "eval": {"data_dir": str(data_dir)},
                             "data": {"mmmlu_format_items": 3, "seed": 7, **data}})


def test_records_pair_each_question_in_english_and_the_target_language(tmp_path):
    d = _data(tmp_path)
    recs = F.records(_cfg(d))
    ids = F.item_ids(30, 3, 7)
    assert [r.meta["mmmlu_row"] for r in recs] == [int(i) for i in ids]
    for r in recs:
        i = r.meta["mmmlu_row"]
        assert r.source == "mmmlu-format" and r.tgt_lang == "de"
        assert f"Question {i}?" in r.x_en and "Answer: $LETTER" in r.x_en
        assert f"Frage {i}?" in r.x_tgt and "Antwort: $LETTER" in r.x_tgt
        assert (r.y_en, r.y_tgt) == (f"Answer: {'ABCD'[i % 4]}", f"Antwort: {'ABCD'[i % 4]}")
    bad = int(ids[1])
    _data(tmp_path, misalign_at=bad)
    with pytest.raises(ConfigError, match=rf"MMMLU row {bad} in German .* is not English row {bad}"):
        F.records(_cfg(tmp_path))


def test_build_adds_the_items_to_every_training_set(tmp_path, monkeypatch):
    from clo.data.build import build_dataset
    from clo.data.records import read_records
    from test_data_build import FAKE, _alpaca  # the data tests' German stand-in translator

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "fake_translator.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(mods))
    import importlib

    import fake_translator

    importlib.reload(fake_translator)
    d = _data(tmp_path / "shared")
    cfg = _cfg(d, source="alpaca", path=str(_alpaca(tmp_path / "a.json", 20)), n=20,
               translator={"kind": "fake-de", "batch_size": 4}, val_fraction=0.1, subsets=[5, 10])
    s = build_dataset(cfg, tmp_path / "out", progress=False)
    rows = [int(i) for i in F.item_ids(30, 3, 7)]
    assert s["mmmlu_format_items"] == rows and s["train"] == 18
    train = read_records(tmp_path / "out" / "train.jsonl")
    assert len(train) == 21 and [r.meta["mmmlu_row"] for r in train[-3:]] == rows
    for k in (5, 10):
        sub = read_records(tmp_path / "out" / "subsets" / f"train_{k}.jsonl")
        assert len(sub) == k + 3 and [r.source for r in sub[-3:]] == ["mmmlu-format"] * 3
    assert "MMMLU format items in train (Appendix D) | 3" in (tmp_path / "out" / "summary.md").read_text()


@pytest.mark.parametrize("lang", ["de", "en"])
def test_the_evaluation_leaves_exactly_those_items_out(tmp_path, monkeypatch, lang):
    from clo.testing import tiny_model, tiny_tokenizer

    d = _data(tmp_path / "shared")

    def scripted(model, tok, prompts, **kw):
        yield list(range(len(prompts))), ["Antwort: A"] * len(prompts)

    monkeypatch.setattr("clo.eval.generation.iter_generate", scripted)
    model = (tiny_model("llama", vocab_size=512), tiny_tokenizer())
    cfg = load_config(None, [f"eval.data_dir={d}", "lang=de", "data.mmmlu_format_items=3", "data.seed=7"])
    m = evaluate("mmmlu", model, cfg, tmp_path / "out", lang=lang)
    assert (m["n"], m["format_items_left_out"]) == (27, 3)
    recs = json.loads((tmp_path / "out" / f"mmmlu-{lang}.json").read_text())["records"]
    assert {r["id"] for r in recs} == {str(i) for i in range(30)} - set(F.item_ids(30, 3, 7))
    assert "3 questions trained on as format items" in (tmp_path / "out" / f"mmmlu-{lang}.md").read_text()
    # without format items nothing is left out
    m0 = evaluate("mmmlu", model, load_config(None, [f"eval.data_dir={d}", "lang=de"]), tmp_path / "out0", lang=lang)
    assert m0["n"] == 30 and "format_items_left_out" not in m0


def test_a_prebuilt_dataset_gets_the_items_too(tmp_path):
    from pathlib import Path

    from clo.data.records import read_records
    from clo.experiments.grid import prebuilt_dataset

    d = _data(tmp_path / "shared")
    cfg = _cfg(d, val_fraction=0.25, subsets=[4])
    fixtures = Path(__file__).parent / "fixtures" / "experiments" / "de_records.jsonl"
    out = prebuilt_dataset(fixtures, cfg, tmp_path / "out")
    rows = [int(i) for i in F.item_ids(30, 3, 7)]
    assert out["mmmlu_format_items"] == rows and out["train"] == 9
    assert len(read_records(tmp_path / "out" / "train.jsonl")) == 12
    assert [r.meta["mmmlu_row"] for r in read_records(tmp_path / "out" / "subsets" / "train_4.jsonl")[4:]] == rows
