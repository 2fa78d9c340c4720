import json

import pytest

from clo.data.records import CrossLingualRecord, RecordError, read_records, write_records


def _rec(i, **kw):
    d = {"id": f"r{i}", "source": "alpaca", "tgt_lang": "de", "x_en": "Hi?", "y_en": "Hello.", "x_tgt": "Hallo?",
             "y_tgt": "Hallo.", "meta": {"translator": "t", "checks": {"lang": True}}}
    d.update(kw)
    return d


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip(tmp_path, suffix):
    recs = [CrossLingualRecord.from_dict(_rec(i)) for i in range(3)]
    path = write_records(recs, tmp_path / f"d{suffix}")
    assert read_records(path) == recs


def test_bad_lines_name_file_line_field(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(_rec(0)) + "\n\n{not json\n")
    with pytest.raises(RecordError, match=rf"{f}:3: malformed JSON"):
        read_records(f)
    bad = _rec(1)
    del bad["y_tgt"]
    f.write_text(json.dumps(_rec(0)) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError) as e:
        read_records(f)
    assert (e.value.line, e.value.field, e.value.reason) == (2, "y_tgt", "missing field")
    f.write_text(json.dumps(_rec(0, x_tgt="  ")) + "\n")
    with pytest.raises(RecordError, match=r":1: field 'x_tgt' empty text"):
        read_records(f)
    f.write_text(json.dumps(_rec(0)) + "\n" + json.dumps(_rec(0)) + "\n")
    with pytest.raises(RecordError, match="duplicate id 'r0'"):
        read_records(f)


def test_json_list_of_records_and_hints_for_other_files(tmp_path):
    f = tmp_path / "d.json"
    recs = [CrossLingualRecord.from_dict(_rec(i)) for i in range(2)]
    f.write_text(json.dumps([r.to_dict() for r in recs]), encoding="utf-8")
    assert read_records(f) == recs
    bad = _rec(1)
    del bad["y_tgt"]
    f.write_text(json.dumps([_rec(0), bad]), encoding="utf-8")
    with pytest.raises(RecordError, match=r"d\.json: field '\[1\]\.y_tgt' missing field"):
        read_records(f)
    # Files of other formats say what they are and which command reads them.
    f = tmp_path / "par.jsonl"
    f.write_text(json.dumps({"x_en": "a", "y_en": "b", "x_tgt": "c", "y_tgt": "d"}) + "\n")
    with pytest.raises(RecordError, match=r"par\.jsonl:1: field 'id' missing field; a parallel record .*"
                                          r"clo data check FILE --lang xx"):
        read_records(f)
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    with pytest.raises(RecordError, match=r"an English chat row, not a cross-lingual record .* clo data build"):
        read_records(f)


def test_a_json_list_of_records_names_the_line_of_a_bad_byte(tmp_path):
    f = tmp_path / "r.json"
    # Line 3, column 15: two spaces, "x_en":, a space, a quote, c, a, f, then the Latin-1 byte.
    f.write_bytes(b'[\n {"id": "r0", "tgt_lang": "de",\n  "x_en": "caf\xe9"}\n]\n')
    with pytest.raises(RecordError, match=rf"^{f}:3: not valid UTF-8 \(byte 0xe9 at column 15\)"):
        read_records(f)
