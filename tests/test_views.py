"""Views out: TRL's conversational format (rendered by TRL exactly as clo renders prompts), the
standard strings, LLaMA-Factory's sharegpt/OpenAI rows and dataset_info.json, JSON vs JSON lines."""

import json

import pytest

from clo.data.records import CrossLingualRecord, write_records
from clo.data.views import dataset_info, make_view, write_view


def _rec(i):
    return CrossLingualRecord(id=f"r{i}", tgt_lang="de", x_en=f"Question {i}?", y_en=f"Answer {i}.",
                              x_tgt=f"Frage {i}?", y_tgt=f"Antwort {i}.")


def test_conversational_and_llama_factory_rows_exact():
    recs = [_rec(0)]
    assert make_view("sft", recs, style="conversational") == [
        {"id": "r0/en", "prompt": [{"role": "user", "content": "Question 0?"}],
         "completion": [{"role": "assistant", "content": "Answer 0."}], "lang": "en"},
        {"id": "r0/de", "prompt": [{"role": "user", "content": "Frage 0?"}],
         "completion": [{"role": "assistant", "content": "Antwort 0."}], "lang": "de"},
    ]
    dpo = sorted(make_view("dpo", recs, style="conversational"), key=lambda r: r["id"])
    assert dpo[0] == {"id": "r0/de", "prompt": [{"role": "user", "content": "Frage 0?"}],
                      "chosen": [{"role": "assistant", "content": "Antwort 0."}],
                      "rejected": [{"role": "assistant", "content": "Answer 0."}]}
    assert make_view("sft-tgt", recs, style="llama-factory") == [
        {"id": "r0/de", "messages": [{"role": "user", "content": "Frage 0?"},
                                     {"role": "assistant", "content": "Antwort 0."}], "lang": "de"}]
    lf = sorted(make_view("dpo", recs, style="llama-factory"), key=lambda r: r["id"])
    assert lf[1] == {"id": "r0/en", "messages": [{"role": "user", "content": "Question 0?"}],
                     "chosen": {"role": "assistant", "content": "Answer 0."},
                     "rejected": {"role": "assistant", "content": "Antwort 0."}}
    # The dpo shuffle is the same in every style.
    ids = [r["id"] for r in make_view("dpo", [_rec(0), _rec(1)], seed=3)]
    assert [r["id"] for r in make_view("dpo", [_rec(0), _rec(1)], seed=3, style="conversational")] == ids
    with pytest.raises(ValueError, match="LLaMA-Factory has no CLO loss"):
        make_view("clo", recs, style="llama-factory")
    with pytest.raises(ValueError, match="unknown view format 'xml'"):
        make_view("sft", recs, style="xml")


def test_trl_renders_conversational_views_with_clos_chat_template(tiny_tok):
    """TRL applies the tokenizer's chat template to conversational rows, giving exactly the prompt
    and response text clo trains and evaluates on; to the standard strings it applies none."""
    from trl.data_utils import maybe_apply_chat_template

    from clo.formatting import render_completion, render_prompt

    r = _rec(0)
    (sft_row,) = make_view("sft-tgt", [r], style="conversational")
    got = maybe_apply_chat_template({k: sft_row[k] for k in ("prompt", "completion")}, tiny_tok)
    assert got["prompt"] == render_prompt(tiny_tok, r.x_tgt)
    assert got["completion"] == render_completion(tiny_tok, r.x_tgt, r.y_tgt)
    pref = next(x for x in make_view("dpo", [r], style="conversational") if x["id"] == "r0/de")
    got = maybe_apply_chat_template({k: pref[k] for k in ("prompt", "chosen", "rejected")}, tiny_tok)
    assert got["prompt"] == render_prompt(tiny_tok, r.x_tgt)
    assert got["chosen"] == render_completion(tiny_tok, r.x_tgt, r.y_tgt)
    assert got["rejected"] == render_completion(tiny_tok, r.x_tgt, r.y_en)
    (std,) = make_view("sft-tgt", [r], style="standard")
    plain = maybe_apply_chat_template({k: std[k] for k in ("prompt", "completion")}, tiny_tok)
    assert plain["prompt"] == r.x_tgt != render_prompt(tiny_tok, r.x_tgt)  # why the default changed


def test_json_out_is_json_and_jsonl_is_lines(tmp_path):
    rows = make_view("sft", [_rec(0)], style="conversational")
    j = write_view(rows, tmp_path / "x.json")
    assert json.loads(j.read_text(encoding="utf-8")) == rows
    jl = write_view(rows, tmp_path / "x.jsonl")
    assert [json.loads(line) for line in jl.read_text().splitlines()] == rows
    pq = write_view(rows, tmp_path / "x.parquet")
    import pyarrow.parquet as papq

    assert papq.read_table(pq).to_pylist()[0]["prompt"] == rows[0]["prompt"]


def test_dataset_info_entries():
    assert dataset_info("sft", "clo_sft.json") == {
        "file_name": "clo_sft.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}}
    dpo = dataset_info("dpo", "p.json")
    assert dpo["ranking"] is True and dpo["columns"] == {"messages": "messages", "chosen": "chosen",
                                                         "rejected": "rejected"}


def test_cli_view_formats(tmp_path, capsys):
    from clo.cli import main

    data = write_records([_rec(0), _rec(1)], tmp_path / "train.jsonl")
    lf = tmp_path / "lf"
    lf.mkdir()
    (lf / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.json"}}))
    assert main(["data", "view", str(data), "--view", "sft", "--format", "llama-factory",
                 "--out", str(lf / "clo_sft_de.json")]) == 0
    assert main(["data", "view", str(data), "--view", "dpo", "--format", "llama-factory", "--name", "clo_dpo",
                 "--out", str(lf / "dpo.json")]) == 0
    out = capsys.readouterr().out
    assert "LLaMA-Factory entry 'clo_sft_de'" in out
    info = json.loads((lf / "dataset_info.json").read_text())
    assert sorted(info) == ["clo_dpo", "clo_sft_de", "mine"]
    assert info["clo_sft_de"]["file_name"] == "clo_sft_de.json" and info["clo_dpo"]["ranking"] is True
    rows = json.loads((lf / "clo_sft_de.json").read_text())
    assert len(rows) == 4 and rows[0]["messages"][0] == {"role": "user", "content": "Question 0?"}
    # The default format is TRL's conversational one.
    assert main(["data", "view", str(data), "--view", "sft-eng", "--out", str(tmp_path / "v.jsonl")]) == 0
    row = json.loads((tmp_path / "v.jsonl").read_text().splitlines()[0])
    assert row["prompt"] == [{"role": "user", "content": "Question 0?"}]
    assert main(["data", "view", str(data), "--view", "clo", "--format", "llama-factory",
                 "--out", str(tmp_path / "c.json")]) == 2
    assert "LLaMA-Factory has no CLO loss" in capsys.readouterr().err


def test_a_malformed_dataset_info_is_named_by_line_and_kept(tmp_path):
    from clo.data.views import write_dataset_info
    from clo.errors import InputError

    info = tmp_path / "dataset_info.json"
    info.write_text('{\n  "a": {"file_name": "a.json"},\n  "b": \n}\n')
    with pytest.raises(InputError, match=r"dataset_info\.json:4: malformed JSON: Expecting value \(column 1\)"):
        write_dataset_info(tmp_path / "sft.json", "sft")
    assert info.read_text() == '{\n  "a": {"file_name": "a.json"},\n  "b": \n}\n'
