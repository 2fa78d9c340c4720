"""Malformed input to `clo train` and `clo eval`: one line `clo CMD: error: ...` naming the file,
line and field, exit status 2, no traceback, nothing lost; torn last lines are dropped with a
warning instead of blocking a rerun."""

import json
import logging

import pytest

from clo.cli import main
from clo.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("errors")
    tiny_model("llama", vocab_size=512).save_pretrained(d / "model")
    tiny_tokenizer().save_pretrained(d / "model")
    return d


def _error(capsys, cmd: str) -> str:
    """The one line of stderr, which must be `clo CMD: error: ...`."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # progress bars (loading weights, tokenising) redraw with \r; only messages count
    lines = [ln for ln in err.splitlines() if ln.strip() and "%|" not in ln]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"clo {cmd}: error: "), lines[0]
    return lines[0].removeprefix(f"clo {cmd}: error: ")


# ---------------------------------------------------------------------------------------------
# clo eval


@pytest.mark.parametrize(("task", "flag", "value"), [
    ("belebele", "--limit", "-3"), ("fidelity", "--limit", "-3"), ("fidelity", "--limit", "0"),
    ("fidelity", "--max-new-tokens", "0"), ("mmmlu", "--max-new-tokens", "-1"),
])
def test_eval_refuses_non_positive_counts(work, tmp_path, capsys, task, flag, value):
    out = tmp_path / "o"
    rc = main(["eval", task, "--model", str(work / "model"), flag, value, "--output", str(out)])
    assert rc == 2
    assert _error(capsys, "eval") == f"{flag}: Input should be greater than 0, got {value}"
    assert not out.exists() or not any(out.iterdir())  # refused before anything ran or was written


def test_eval_missing_model_directory(tmp_path, capsys):
    missing = tmp_path / "runs" / "de" / "clo" / "best"
    assert main(["eval", "fidelity", "--model", str(missing), "--output", str(tmp_path / "o")]) == 2
    assert _error(capsys, "eval").startswith(f"no such model directory or offline name: {missing} ")
    assert main(["eval", "fidelity", "--model", "runs/de/clo/best", "--output", str(tmp_path / "o")]) == 2
    assert "Repo id" not in _error(capsys, "eval")


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_eval_non_utf8_prompts_file_names_file_and_line(work, tmp_path, capsys, suffix):
    path = tmp_path / f"prompts{suffix}"
    head = {".txt": b"hello\nworld\n", ".jsonl": b'{"prompt": "a"}\n{"prompt": "b"}\n',
            ".csv": b"prompt\nhello\n"}[suffix]
    path.write_bytes(head + b"caf\xe9 au lait\n")  # Latin-1, not UTF-8
    rc = main(["eval", "fidelity", "--model", str(work / "model"), "--prompts-file", str(path),
               "--output", str(tmp_path / "o")])
    assert rc == 2
    assert _error(capsys, "eval") == f"{path}:3: not valid UTF-8 (byte 0xe9 at column 4); save the file as UTF-8"
    assert not list((tmp_path / "o").glob("*.cache.jsonl"))  # the failed run left no empty cache


def _belebele_dir(shared_data, root, n=2):
    rows = [json.loads(x) for x in (shared_data / "belebele" / "deu_Latn.jsonl").read_text().splitlines()[:n]]
    for r in rows:
        r["flores_passage"] = r["flores_passage"][:100]
    (root / "belebele").mkdir(parents=True, exist_ok=True)
    path = root / "belebele" / "deu_Latn.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _belebele(work, data, out):
    return main(["eval", "belebele", "--model", str(work / "model"), "--lang", "de", "--data-dir", str(data),
                 "--output", str(out), "--template", "harness"])


def test_eval_non_utf8_and_non_object_data_lines(work, shared_data, tmp_path, capsys):
    path = _belebele_dir(shared_data, tmp_path / "d")
    good = path.read_bytes()
    path.write_bytes(good + b'{"question": "\xff"}\n')
    assert _belebele(work, tmp_path / "d", tmp_path / "o") == 2
    assert _error(capsys, "eval") == f"{path}:3: not valid UTF-8 (byte 0xff at column 15); save the file as UTF-8"
    path.write_bytes(b"[1, 2]\n" + good)
    assert _belebele(work, tmp_path / "d", tmp_path / "o") == 2
    assert _error(capsys, "eval") == f"{path}:1: expected a JSON object, got list"
    first = json.loads(good.splitlines()[0])
    del first["mc_answer3"]
    path.write_bytes(good + json.dumps(first).encode() + b"\n")
    assert _belebele(work, tmp_path / "d", tmp_path / "o") == 2
    assert _error(capsys, "eval") == f"{path}:3: field 'mc_answer3' missing"


def test_failed_evaluation_leaves_no_empty_cache_and_reruns(work, shared_data, tmp_path, capsys):
    out = tmp_path / "o"
    assert _belebele(work, tmp_path / "d", out) == 2  # no data yet
    assert "no BELEBELE file" in _error(capsys, "eval")
    assert list(out.iterdir()) == []
    _belebele_dir(shared_data, tmp_path / "d")
    assert _belebele(work, tmp_path / "d", out) == 0
    assert json.loads((out / "belebele-de-harness.json").read_text())["metrics"]["n"] == 2


def test_torn_cache_header_does_not_block_a_rerun(work, shared_data, tmp_path, capsys, caplog):
    _belebele_dir(shared_data, tmp_path / "d")
    out = tmp_path / "o"
    out.mkdir()
    cache = out / "belebele-de-harness.cache.jsonl"
    cache.write_text('{"fingerprint": "3f2a', encoding="utf-8")  # killed while writing the header
    with caplog.at_level(logging.WARNING, logger="clo.eval.core"):
        assert _belebele(work, tmp_path / "d", out) == 0
    assert f"{cache}:1: torn cache header" in caplog.text
    lines = cache.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(json.loads(x) for x in lines)
    assert json.loads((out / "belebele-de-harness.json").read_text())["metrics"]["n"] == 2


def test_torn_last_cache_line_is_dropped_with_a_warning(work, shared_data, tmp_path, capsys, caplog):
    _belebele_dir(shared_data, tmp_path / "d", n=3)
    out = tmp_path / "o"
    assert _belebele(work, tmp_path / "d", out) == 0
    first = json.loads((out / "belebele-de-harness.json").read_text())["records"]
    cache = out / "belebele-de-harness.cache.jsonl"
    lines = cache.read_bytes().splitlines(keepends=True)
    # killed while writing the third item, inside a multi-byte character
    cache.write_bytes(b"".join(lines[:3]) + '{"key": "2:x", "value": {"id": "ü'.encode()[:-1])
    with caplog.at_level(logging.WARNING, logger="clo.eval.core"):
        assert _belebele(work, tmp_path / "d", out) == 0
    assert f"{cache}:4: torn last line" in caplog.text
    assert json.loads((out / "belebele-de-harness.json").read_text())["records"] == first
    assert cache.read_bytes().splitlines() == [ln.rstrip(b"\n") for ln in lines]  # header + 3 items


def test_foreign_file_in_place_of_the_cache_is_an_error(work, shared_data, tmp_path, capsys):
    _belebele_dir(shared_data, tmp_path / "d")
    out = tmp_path / "o"
    out.mkdir()
    cache = out / "belebele-de-harness.cache.jsonl"
    cache.write_text("id,text\n1,hello\n", encoding="utf-8")
    assert _belebele(work, tmp_path / "d", out) == 2
    assert _error(capsys, "eval").startswith(f"{cache}:1: not an evaluation cache")
    assert cache.read_text(encoding="utf-8") == "id,text\n1,hello\n"  # not overwritten


# ---------------------------------------------------------------------------------------------
# clo train

REC = {"id": "t0", "tgt_lang": "de", "x_en": "what is", "y_en": "the cat", "x_tgt": "die Frage", "y_tgt": "der Hund"}


def _train(work, data, out, *extra):
    return main(["train", "--data", str(data), "--output", str(out), "--set", f"model={work / 'model'}",
                 "--set", "lang=de", "--set", "train.max_length=64", *extra])


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_train_missing_data_file(work, tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert _train(work, missing, tmp_path / "run") == 2
    assert _error(capsys, "train") == f"--data {missing}: no such dataset file"
    good = _jsonl(tmp_path / "t.jsonl", [REC])
    assert _train(work, good, tmp_path / "run", "--val", str(missing)) == 2
    assert _error(capsys, "train") == f"--val {missing}: no such dataset file"


def test_train_malformed_records_name_file_line_and_field(work, tmp_path, capsys):
    bad = _jsonl(tmp_path / "bad.jsonl", [REC, "{oops"])
    assert _train(work, bad, tmp_path / "r1") == 2
    assert _error(capsys, "train").startswith(f"{bad}:2: malformed JSON")
    no_field = _jsonl(tmp_path / "nf.jsonl", [REC, {k: v for k, v in REC.items() if k != "y_tgt"}])
    assert _train(work, no_field, tmp_path / "r2") == 2
    assert _error(capsys, "train") == f"{no_field}:2: field 'y_tgt' missing field"
    other_lang = _jsonl(tmp_path / "ko.jsonl", [{**REC, "tgt_lang": "ko"}])
    assert _train(work, other_lang, tmp_path / "r3") == 2
    assert "tgt_lang is 'ko', the run's language is 'de'" in _error(capsys, "train")


def test_train_missing_model_and_bad_trainable(work, tmp_path, capsys):
    good = _jsonl(tmp_path / "t.jsonl", [REC])
    rc = main(["train", "--data", str(good), "--output", str(tmp_path / "r"), "--set", "model=runs/de/clo/best"])
    assert rc == 2
    assert _error(capsys, "train").startswith("no such model directory or offline name: runs/de/clo/best")
    assert _train(work, good, tmp_path / "r1", "--trainable", "no_such_param") == 2
    assert _error(capsys, "train") == "train.trainable: regex 'no_such_param' matches no parameter of LlamaForCausalLM"
    assert _train(work, good, tmp_path / "r2", "--set", "train.beta=abc") == 2
    assert _error(capsys, "train").startswith("--set train.beta=abc: train.beta: ")


def test_train_non_utf8_data_is_one_error_line(work, tmp_path, capsys):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes((json.dumps(REC) + "\n").encode() + json.dumps({**REC, "id": "t1"}).encode().replace(
        b"Hund", b"H\xfcnd") + b"\n")
    assert _train(work, bad, tmp_path / "r") == 2
    assert "UTF-8" in _error(capsys, "train")


def test_train_non_utf8_data_names_file_and_line(work, tmp_path, capsys):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes((json.dumps(REC) + "\n").encode() + b'{"id": "\xfc"}\n')
    assert _train(work, bad, tmp_path / "r") == 2
    assert _error(capsys, "train") == f"{bad}:2: not valid UTF-8 (byte 0xfc at column 9); save the file as UTF-8"


def test_torn_last_line_of_the_training_log_is_dropped(tmp_path, caplog):
    from clo.train.tracking import JsonLog

    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="clo.train.tracking"):
        lg = JsonLog(tmp_path, resume_step=2)
    assert f"{path}:3: torn last line dropped" in caplog.text
    lg.log({"loss": 1.2}, step=3)
    lg.close()
    assert [json.loads(x) for x in path.read_text().splitlines()] == [
        {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.2}]


def test_malformed_middle_line_of_the_training_log_is_an_error(tmp_path):
    from clo.train.tracking import JsonLog, LogFileError

    path = tmp_path / "log.jsonl"
    text = '{"step": 1}\nnot json\n{"step": 2}\n'
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LogFileError, match=f"^{path}:2: not a JSON object"):
        JsonLog(tmp_path, resume_step=2)
    assert path.read_text(encoding="utf-8") == text  # nothing lost


# ---------------------------------------------------------------------------------------------
# Model specs


def test_model_spec_resolution(tmp_path):
    from clo.models import ModelLoadError, resolve

    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve(str(tmp_path)) == str(tmp_path)
    for spec in ("runs/de/clo/best", "./best", str(tmp_path / "missing"), "~/nope/x"):
        with pytest.raises(ModelLoadError, match="^no such model directory or offline name: "):
            resolve(spec)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file, not a model directory"):
        resolve(str(tmp_path / "weights.bin"))


def test_non_utf8_config_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_bytes(b"lang: de\n# caf\xe9\n")
    assert main(["eval", "fidelity", "--config", str(bad)]) == 2
    assert _error(capsys, "eval") == f"{bad}:2: not valid UTF-8 (byte 0xe9 at column 6); save the file as UTF-8"


def test_eval_flag_of_another_task(capsys):
    assert main(["eval", "mmmlu", "--template", "native"]) == 2
    assert _error(capsys, "eval") == "--template applies only to belebele, not mmmlu"
