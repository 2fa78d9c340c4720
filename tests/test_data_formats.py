"""Any data in: ShareGPT, OpenAI messages (content parts too), Alpaca, TRL, tables, dataset
directories and hub ids (through ``datasets.load_dataset``), pre-translated parallel data with a
column mapping, ``clo data check``."""

import json
import logging

import datasets
import pytest

from clo.config import load_config
from clo.data.records import RecordError, read_records
from clo.data.sources import SourceOptions, detect_format, load_examples, load_source


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


SHAREGPT = [
    {"id": "s1", "conversations": [{"from": "system", "value": "You are terse."},
                                   {"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."},
                                   {"from": "human", "value": "Another?"}, {"from": "gpt", "value": "Red."}]},
    {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello!"}]},
]


def test_sharegpt_jsonl_first_turn_and_the_log_counts(tmp_path, caplog):
    path = _jsonl(tmp_path / "sg.jsonl", SHAREGPT)
    with caplog.at_level(logging.INFO, logger="clo.data.sources"):
        got = load_source("chat", path, 10)
    assert [(e.id, e.x_en, e.y_en, e.source) for e in got] == [
        ("s1", "Name a colour.", "Blue.", "chat"), ("chat-2", "Hi?", "Hello!", "chat")]
    msg = caplog.text
    assert "1 conversations had later turns, 2 messages dropped" in msg
    assert "1 system prompts dropped" in msg and "1 rows without an id" in msg
    # The same through auto, and the system prompt kept in front of the instruction on request.
    got = load_source("auto", path, 10, options=SourceOptions(system_prompt="prepend"))
    assert got[0].x_en == "You are terse.\n\nName a colour." and got[1].x_en == "Hi?"


def test_json_array_of_chats_and_openai_content_parts(tmp_path):
    rows = [
        {"messages": [{"role": "developer", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "text", "text": "Line one."},
                                                   {"type": "text", "text": "Line two."}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "Done."}]}]},
        {"messages": [{"role": "assistant", "content": "Welcome!"}, {"role": "user", "content": "Q"},
                      {"role": "assistant", "content": "A"}]},
    ]
    p = tmp_path / "chats.json"
    p.write_text(json.dumps(rows), encoding="utf-8")
    got = load_source("chat", str(p), 10)
    assert [(e.id, e.x_en, e.y_en) for e in got] == [("chat-0", "Line one.\nLine two.", "Done."), ("chat-1", "Q", "A")]
    rows[0]["messages"][1]["content"].append({"type": "image_url", "image_url": {"url": "http://x/cat.png"}})
    p.write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(RecordError, match=r"chats\.json: field '\[0\]\.messages\[1\]\.content\[2\]' a image_url "
                                          r"content part: clo translates text only"):
        load_source("chat", str(p), 10)
    # {"data": [...]}: the one list of rows in a JSON object.
    p.write_text(json.dumps({"version": 2, "data": rows[1:]}), encoding="utf-8")
    assert [e.x_en for e in load_source("chat", str(p), 10)] == ["Q"]


def test_trl_files_as_sources_and_as_records(tmp_path):
    pref = _jsonl(tmp_path / "pref.jsonl", [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
         "rejected": [{"role": "assistant", "content": "5"}]},
    ])
    got = load_source("trl", pref, 10)
    assert [(e.id, e.x_en, e.y_en) for e in got] == [("trl-0", "Capital of France?", "Paris."), ("trl-1", "2+2?", "4")]
    assert [e.y_en for e in load_source("auto", pref, 10)] == ["Paris.", "4"]
    sft = _jsonl(tmp_path / "sft.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    assert load_source("trl", sft, 1)[0].y_en == "Hello"
    # Read as cross-lingual records: one line saying what the file is, no traceback.
    with pytest.raises(RecordError, match=r"pref\.jsonl:1: field 'id' missing field; this is a TRL preference row"):
        read_records(pref)


def test_alpaca_variants_tables_history_and_wrong_source(tmp_path):
    rows = [{"instruction": "Add.", "input": "2 and 3", "output": "5", "system": "Math tutor."},
            {"instruction": "Now?", "output": "Later.", "history": [["First q", "First a"], ["Second q", "Second a"]]}]
    p = _jsonl(tmp_path / "a.jsonl", rows)
    got = load_source("alpaca", p, 10)
    assert [(e.id, e.x_en, e.y_en) for e in got] == [("alpaca-0", "Add.\n\n2 and 3", "5"),
                                                     ("alpaca-1", "Now?", "Later.")]
    csv = tmp_path / "a.csv"
    csv.write_text('instruction,input,output\n"Say ""hi"".",,hi\nCount.,to 2,"1, 2"\n', encoding="utf-8")
    assert [(e.x_en, e.y_en) for e in load_source("auto", str(csv), 10)] == [('Say "hi".', "hi"),
                                                                             ("Count.\n\nto 2", "1, 2")]
    sg = _jsonl(tmp_path / "sg.jsonl", SHAREGPT)
    with pytest.raises(RecordError, match=r"sg\.jsonl:1: a sharegpt row \(keys: id, conversations\), but "
                                          r"data\.source=alpaca reads instruction/output \(Alpaca\): use data\.source: chat"):
        load_source("alpaca", sg, 10)
    odd = _jsonl(tmp_path / "odd.jsonl", [{"question": "Q", "answer": "A"}])
    with pytest.raises(RecordError, match=r"not a row clo knows \(keys: question, answer\); expected one of: .*"
                                          r"data\.columns"):
        load_source("auto", odd, 10)


def test_column_mapping_through_the_config(tmp_path):
    dolly = _jsonl(tmp_path / "dolly.jsonl", [
        {"instruction": "Summarise.", "context": "A long text.", "response": "Short.", "category": "summarization"}])
    cfg = load_config(None, ["data.source=alpaca", f"data.path={dolly}", "data.columns.input=context",
                             "data.columns.output=response"])
    (ex,) = load_examples(cfg.data)
    assert (ex.x_en, ex.y_en) == ("Summarise.\n\nA long text.", "Short.")
    cfg = load_config(None, ["data.source=auto", f"data.path={dolly}", "data.columns.output=answer"])
    with pytest.raises(RecordError, match=r"field 'answer' missing field \(data\.columns\.output: 'answer'\)"):
        load_examples(cfg.data)
    with pytest.raises(Exception, match=r"data\.columns\.outptu: unknown key"):
        load_config(None, ["data.columns.outptu=x"])


class FakeLoadDataset:
    def __init__(self, ds):
        self.ds, self.calls = ds, []

    def __call__(self, path, name=None, **kw):
        self.calls.append((path, name, kw))
        return self.ds


def test_hub_ids_and_dataset_directories_go_through_datasets(tmp_path, monkeypatch):
    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(3)]
    # A hub id: one datasets.load_dataset(id, name=hub_config, split=split) call (the hub is
    # unreachable here, so a stand-in serves a real Dataset in the repository's schema).
    fake = FakeLoadDataset(datasets.Dataset.from_list(rows))
    monkeypatch.setattr(datasets, "load_dataset", fake)
    cfg = load_config(None, ["data.path=tatsu-lab/alpaca", "data.n=2"])
    got = load_examples(cfg.data)
    assert fake.calls == [("tatsu-lab/alpaca", None, {"split": "train"})]
    assert [(e.id, e.x_en) for e in got] == [("alpaca-0", "Say 0."), ("alpaca-1", "Say 1.")]
    load_source("auto", "someone/chats", 1, options=SourceOptions(split="test", hub_config="en"))
    assert fake.calls[-1] == ("someone/chats", "en", {"split": "test"})
    # Errors of the hub call are one line naming the id.
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(ValueError, match=r"nobody/nothing: not a local file; as a hub dataset id, "
                                         r"datasets\.load_dataset failed: ConnectionError: offline"):
        load_source("alpaca", "nobody/nothing", 1)
    monkeypatch.undo()
    # A local directory goes through the same real call; a save_to_disk directory through load_from_disk.
    d = tmp_path / "repo"
    (d / "data").mkdir(parents=True)
    _jsonl(d / "data" / "train.jsonl", rows)
    assert [e.y_en for e in load_source("alpaca", str(d), 10)] == ["0", "1", "2"]
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(SHAREGPT[1:])}).save_to_disk(str(saved))
    assert [(e.x_en, e.y_en) for e in load_source("chat", str(saved), 10)] == [("Hi?", "Hello!")]
    with pytest.raises(ValueError, match=r"saved: no split 'validation' \(has train\); set data\.split"):
        load_source("chat", str(saved), 10, options=SourceOptions(split="validation"))
    with pytest.raises(FileNotFoundError, match="no such Alpaca file"):
        load_source("alpaca", str(tmp_path / "missing.json"), 1)


def test_oasst1_rows_are_detected_by_auto():
    from pathlib import Path

    path = Path(__file__).parent / "fixtures" / "data" / "oasst1" / "oasst1_sample.jsonl"
    assert [e.id[:2] for e in load_source("auto", str(path), 3)] == ["a0", "i0", "b0"]


PARALLEL = [
    {"en_q": "How do I boil an egg?", "en_a": "Put the egg in boiling water for about eight minutes.",
     "de_q": "Wie koche ich ein Ei?", "de_a": "Lege das Ei für etwa acht Minuten in kochendes Wasser."},
    {"en_q": "What is the weather like today?", "en_a": "It is sunny and warm today in the whole region.",
     "de_q": "What is the weather like today?", "de_a": "Heute ist es in der ganzen Region sonnig und warm."},
]
COLUMNS = ["--set", "data.columns.x_en=en_q", "--set", "data.columns.y_en=en_a", "--set", "data.columns.x_tgt=de_q",
           "--set", "data.columns.y_tgt=de_a"]


def test_parallel_data_with_a_column_mapping(tmp_path):
    p = _jsonl(tmp_path / "par.jsonl", PARALLEL)
    opts = SourceOptions(columns={"x_en": "en_q", "y_en": "en_a", "x_tgt": "de_q", "y_tgt": "de_a"}, lang="de")
    got = load_source("parallel", p, None, options=opts, allow_parallel=True)
    assert [(e.id, e.tgt_lang, e.x_tgt) for e in got] == [("parallel-0", "de", "Wie koche ich ein Ei?"),
                                                          ("parallel-1", "de", "What is the weather like today?")]
    # A build must not translate them again: it refuses parallel data (clo data check reads it).
    with pytest.raises(ValueError, match="holds translations already: check them with `clo data check"):
        load_source("parallel", p, None, options=opts)
    assert detect_format({"x_en": 1, "y_en": 1, "x_tgt": 1, "y_tgt": 1}) == "parallel"
    with pytest.raises(RecordError, match=r"p2\.jsonl:1: a pre-translated parallel record .* not English source data: "
                                          r"check it with `clo data check FILE --lang xx`"):
        load_source("auto", _jsonl(tmp_path / "p2.jsonl", [{"x_en": "a", "y_en": "b", "x_tgt": "c", "y_tgt": "d"}]), 1)


def test_cli_data_check(tmp_path, capsys):
    from clo.cli import main

    p = _jsonl(tmp_path / "par.jsonl", PARALLEL)
    out = tmp_path / "checked"
    rc = main(["data", "check", p, "--lang", "de", "--out", str(out), *COLUMNS])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "1 of 2 records pass the checks for de (50.0%); 1 rejected" in printed
    assert "echo_x_tgt: 1" in printed and "lang_x_tgt: 1" in printed
    (rec,) = read_records(out / "checked.jsonl")
    assert (rec.id, rec.tgt_lang, rec.meta["checks"]["passed"]) == ("parallel-0", "de", True)
    (rej,) = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert rej["id"] == "parallel-1" and set(rej["reasons"]) == {"echo_x_tgt", "lang_x_tgt"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records_in"] == 2 and summary["rejects_by_reason"] == {"echo_x_tgt": 1, "lang_x_tgt": 1}
    assert main(["data", "check", p, "--lang", "de", "--strict", *COLUMNS]) == 1
    capsys.readouterr()
    assert main(["data", "check", p, *COLUMNS]) == 2
    assert "give the target language of the translations: --lang xx" in capsys.readouterr().err
    assert main(["data", "check", p, "--lang", "de"]) == 2
    assert "field 'x_en' missing field" in capsys.readouterr().err
