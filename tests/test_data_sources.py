import json
from pathlib import Path

import pytest

from clo.data.records import RecordError
from clo.data.sources import load_alpaca, load_chat, load_oasst1, load_source

FIXTURES = Path(__file__).parent / "fixtures" / "data"
OASST = FIXTURES / "oasst1" / "oasst1_sample.jsonl"


def test_oasst1_selection_exact():
    got = load_oasst1(str(OASST), 100)
    # rank-0 pairs in root order (A, I), then rank 1 (B, G), then unranked (E). Skipped: C (German
    # root), D (deleted root), F (review failed), H (no reply); deleted, blank, Spanish and
    # review-failed replies are never chosen; A's second turn is ignored.
    assert [(e.id[:2], e.x_en, e.y_en) for e in got] == [
        ("a0", "What is the capital of France?", "The capital of France is Paris, on the Seine."),
        ("i0", "At what temperature does water boil?", "Water boils at 100 degrees Celsius at sea level."),
        ("b0", "Give me a tip for learning to cook.", "Start with simple recipes and cook them often."),
        ("g0", "Name a prime number greater than ten.", "Eleven is a prime number greater than ten."),
        ("e0", "How many legs does a spider have?", "A spider has eight legs."),
    ]
    assert got[0].id == "a0000000-0000-4000-8000-000000000000"
    assert {e.source for e in got} == {"oasst1"}


def test_oasst1_takes_first_n_and_reads_directories_and_parquet(tmp_path):
    assert [e.id[:2] for e in load_oasst1(str(OASST), 3)] == ["a0", "i0", "b0"]
    assert [e.id[:2] for e in load_oasst1(str(OASST.parent), 2)] == ["a0", "i0"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in OASST.read_text().splitlines()]
    for r in rows:  # parquet wants one type per column
        r.pop("emojis"), r.pop("labels"), r.pop("detoxify"), r.pop("model_name")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    assert load_oasst1(str(tmp_path / "train.parquet"), 100) == load_oasst1(str(OASST), 100)


def test_oasst1_bad_rows_name_file_line_field(tmp_path):
    lines = OASST.read_text().splitlines()
    bad = json.loads(lines[3])
    del bad["role"]
    p = tmp_path / "x.jsonl"
    p.write_text("\n".join(lines[:3] + [json.dumps(bad)] + lines[4:]) + "\n")
    with pytest.raises(RecordError, match=r"x\.jsonl:4: field 'role' missing field"):
        load_oasst1(str(p), 10)
    p.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(RecordError, match=r"x\.jsonl:2: malformed JSON"):
        load_oasst1(str(p), 10)
    with pytest.raises(FileNotFoundError, match="no such oasst1 export"):
        load_oasst1(str(tmp_path / "missing.jsonl"), 10)


def test_alpaca_joins_input_and_names_bad_items(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([
        {"instruction": "Translate this.", "input": "Good morning", "output": "Guten Morgen"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"instruction": "Ignored: beyond n.", "input": "", "output": "x"},
    ]))
    got = load_alpaca(str(p), 2)
    assert [(e.id, e.x_en, e.y_en) for e in got] == [
        ("alpaca-0", "Translate this.\n\nGood morning", "Guten Morgen"), ("alpaca-1", "Say hi.", "Hi!")]
    p.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(RecordError, match=r"a\.json: field '\[1\]\.output' missing field"):
        load_alpaca(str(p), 10)
    p.write_text('[{"instruction": "a",\n "output": }]')
    with pytest.raises(RecordError, match=r"a\.json:2: malformed JSON"):
        load_alpaca(str(p), 10)


def test_alpaca_real_demo_file_and_max_chars(shared_data):
    path = str(shared_data / "sft_en" / "alpaca_en_demo.json")
    first = load_alpaca(path, 3)
    raw = json.loads((shared_data / "sft_en" / "alpaca_en_demo.json").read_text())
    assert first[0].x_en == raw[0]["instruction"] + ("\n\n" + raw[0]["input"] if raw[0]["input"].strip() else "")
    assert first[2].y_en == raw[2]["output"]
    short = load_source("alpaca", path, 10, max_chars=300)
    assert len(short) == 10
    assert all(len(e.x_en) + len(e.y_en) <= 300 for e in short)
    expected = [f"alpaca-{i}" for i, r in enumerate(raw)
                if len(r["instruction"] + ("\n\n" + r["input"] if r["input"].strip() else "")) + len(r["output"]) <= 300]
    assert [e.id for e in short] == expected[:10]


def test_chat_jsonl(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps(o) for o in [
        {"id": "x1", "messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi?"},
                                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More"}]},
        {"messages": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]},
    ]) + "\n")
    got = load_chat(str(p), 10)
    assert [(e.id, e.x_en, e.y_en) for e in got] == [("x1", "Hi?", "Hello!"), ("chat-2", "Q2", "A2")]
    p.write_text(json.dumps({"messages": [{"role": "assistant", "content": "A"}]}) + "\n")
    with pytest.raises(RecordError, match=r"c\.jsonl:1: field 'messages' expected a user message"):
        load_chat(str(p), 10)
    p.write_text(json.dumps({"text": "no messages"}) + "\n")
    with pytest.raises(RecordError, match=r"c\.jsonl:1: field 'messages' missing field"):
        load_chat(str(p), 10)


def test_unknown_source_and_duplicate_ids(tmp_path):
    with pytest.raises(ValueError, match="unknown data source 'nope'"):
        load_source("nope", None, 1)
    p = tmp_path / "c.jsonl"
    m = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    m2 = [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]
    p.write_text(json.dumps({"id": "same", "messages": m}) + "\n" + json.dumps({"id": "same", "messages": m2}) + "\n")
    with pytest.raises(ValueError, match="duplicate example id 'same'"):
        load_source("chat", str(p), 10)
    # The same pair twice is one example (skipped by content, before ids are compared).
    p.write_text(json.dumps({"id": "same", "messages": m}) + "\n" + json.dumps({"id": "same", "messages": m}) + "\n")
    assert [e.id for e in load_source("chat", str(p), 10)] == ["same"]
