"""Each data format read the way its own ecosystem reads it, on files in that ecosystem's layout:
LLaMA-Factory's Alpaca (``history``, ``system``) and ShareGPT (tools, observations, preference
rows), OpenAI's chat fine-tuning JSONL (tool calls), TRL's conversational and implicit-prompt
preference rows; repeated pairs are skipped and counted, in the log and the build summary."""

import json
import logging
import os
from pathlib import Path

import pytest

from clo.config import load_config
from clo.data.build import build_dataset
from clo.data.sources import SourceOptions, load_source

SHARED = Path(os.environ.get("CLO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# LLaMA-Factory's data/README.md, Alpaca format: a JSON list; `history` holds the turns *before*
# the row's own instruction/output, which is the turn the row trains.
LF_ALPACA = [
    {"instruction": "What is the capital of Italy?", "input": "", "output": "Rome.",
     "system": "You are a geography tutor.",
     "history": [["Hello, can I ask a question?", "Of course, go ahead."]]},
    {"instruction": "And of France?", "input": "", "output": "Paris.",
     "history": [["Hello, can I ask a question?", "Of course, go ahead."], ["Capital of Italy?", "Rome."]]},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "What is the capital of Italy?", "input": "", "output": "Rome.",
     "history": [["Hi!", "Hello."]]},  # the same pair as row 0, other context: a duplicate
]


def _write(path: Path, obj) -> str:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    return str(path)


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_llama_factory_alpaca_history_is_context_not_the_pair(tmp_path, caplog):
    p = _write(tmp_path / "alpaca_history.json", LF_ALPACA)
    with caplog.at_level(logging.INFO, logger="clo.data.sources"):
        got = load_source("alpaca", p, 10)
    # Each row's own turn, never the greeting of its history; row 3 repeats row 0's pair.
    assert [(e.id, e.x_en, e.y_en) for e in got] == [
        ("alpaca-0", "What is the capital of Italy?", "Rome."),
        ("alpaca-1", "And of France?", "Paris."),
        ("alpaca-2", "Translate to French.\n\nGood morning", "Bonjour")]
    assert got.duplicates == 1
    assert "3 rows had history: 4 earlier turns left out" in caplog.text
    assert "1 duplicate pairs skipped" in caplog.text
    # n counts distinct pairs: the duplicate does not take a place.
    assert [e.id for e in load_source("alpaca", p, 2)] == ["alpaca-0", "alpaca-1"]
    # data.history: prepend keeps the earlier turns as the prompt's context, as a transcript.
    got = load_source("alpaca", p, 2, options=SourceOptions(history="prepend"))
    assert got[1].x_en == ("User: Hello, can I ask a question?\n\nAssistant: Of course, go ahead.\n\n"
                           "User: Capital of Italy?\n\nAssistant: Rome.\n\nUser: And of France?")
    assert got[1].y_en == "Paris."


def test_build_summary_counts_the_duplicates(tmp_path):
    p = _write(tmp_path / "alpaca_history.json", LF_ALPACA)
    cfg = load_config(None, ["data.source=alpaca", f"data.path={p}", "data.translator.kind=identity",
                             "data.checks.langid=false", "data.val_fraction=0", "lang=de"])
    s = build_dataset(cfg, tmp_path / "out", progress=False)
    assert (s["records_in"], s["duplicates_skipped"], s["records_out"]) == (3, 1, 3)
    assert "| duplicate pairs skipped | 1 |" in (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    rows = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["x_en"] for r in rows] == ["What is the capital of Italy?", "And of France?",
                                         "Translate to French.\n\nGood morning"]


def test_llama_factory_sharegpt_with_tools_and_preference_rows(tmp_path, caplog):
    rows = [
        {"conversations": [{"from": "human", "value": "Weather in Paris?"},
                           {"from": "function_call", "value": "{\"name\": \"weather\", \"arguments\": {}}"},
                           {"from": "observation", "value": "{\"temp\": 21}"},
                           {"from": "gpt", "value": "It is 21 degrees."}],
         "system": "You can call tools.", "tools": "[{\"name\": \"weather\"}]"},
        {"conversations": [{"from": "human", "value": "Name a fruit."}, {"from": "gpt", "value": "Apple."},
                           {"from": "human", "value": "Another?"}, {"from": "gpt", "value": "Pear."}]},
        # LLaMA-Factory's ShareGPT preference layout: the conversation ends with the user's turn.
        {"conversations": [{"from": "human", "value": "Say hi."}],
         "chosen": {"from": "gpt", "value": "Hi!"}, "rejected": {"from": "gpt", "value": "No."}},
    ]
    p = _write(tmp_path / "sharegpt.json", rows)
    with caplog.at_level(logging.INFO, logger="clo.data.sources"):
        got = load_source("sharegpt", p, 10)
    # The tool-using conversation has no text pair in its first turn: skipped and counted.
    assert [(e.x_en, e.y_en) for e in got] == [("Name a fruit.", "Apple."), ("Say hi.", "Hi!")]
    assert "1 conversations skipped (their first answer comes through a tool call" in caplog.text
    # The name the user wrote, in ids and records; auto names ShareGPT rows sharegpt too.
    assert {e.source for e in got} == {"sharegpt"}
    assert got[-1].id == "sharegpt-2"
    assert {e.source for e in load_source("auto", p, 10)} == {"sharegpt"}
    assert {e.source for e in load_source("chat", p, 10)} == {"chat"}


def test_openai_fine_tuning_jsonl_with_tool_calls(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "What is 2+2?"},
                      {"role": "assistant", "content": "4."}]},
        # An assistant message calling a tool has content null (OpenAI's function-calling layout).
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                      {"role": "user", "content": "Weather?"},
                      {"role": "assistant", "content": None,
                       "tool_calls": [{"id": "c1", "type": "function",
                                       "function": {"name": "weather", "arguments": "{}"}}]},
                      {"role": "tool", "tool_call_id": "c1", "content": "21"},
                      {"role": "assistant", "content": "21 degrees."}],
         "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}]},
    ]
    p = _jsonl(tmp_path / "openai.jsonl", rows)
    got = load_source("chat", p, 10)
    assert [(e.id, e.x_en, e.y_en, e.source) for e in got] == [("chat-1", "What is 2+2?", "4.", "chat"),
                                                                ("chat-2", "Hi", "Hello.", "chat")]


def test_trl_conversational_and_implicit_prompt_preference(tmp_path):
    rows = [
        # TRL's conversational prompt-completion
        {"prompt": [{"role": "user", "content": "What color is the sky?"}],
         "completion": [{"role": "assistant", "content": "It is blue."}]},
        # TRL's implicit-prompt preference: chosen and rejected are whole conversations
        {"chosen": [{"role": "user", "content": "What color is grass?"},
                    {"role": "assistant", "content": "Green."}],
         "rejected": [{"role": "user", "content": "What color is grass?"},
                      {"role": "assistant", "content": "Purple."}]},
    ]
    p = _jsonl(tmp_path / "trl.jsonl", rows)
    got = load_source("trl", p, 10)
    assert [(e.x_en, e.y_en) for e in got] == [("What color is the sky?", "It is blue."),
                                               ("What color is grass?", "Green.")]
    assert [(e.x_en, e.y_en) for e in load_source("auto", p, 10)] == [(e.x_en, e.y_en) for e in got]
    bad = _jsonl(tmp_path / "bad.jsonl", [{"chosen": "The sky is blue.", "rejected": "The sky is green."}])
    with pytest.raises(Exception, match=r"bad\.jsonl:1: field 'prompt' missing field"):
        load_source("trl", bad, 10)


def test_the_shared_alpaca_file_reads_as_distinct_pairs():
    path = SHARED / "sft_en" / "alpaca_en_demo.json"
    rows = json.loads(path.read_text(encoding="utf-8"))
    got = load_source("alpaca", str(path), None)
    distinct = {(r["instruction"] + ("\n\n" + r["input"] if r["input"].strip() else ""), r["output"]) for r in rows}
    assert len(got) == len(distinct) and len(got) + got.duplicates == len(rows)
