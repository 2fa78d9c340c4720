"""Bad input is a one-line error, never a traceback, and a refused command leaves its output
directory as it found it."""

import json
import os
import subprocess
import sys

import pytest

from clo.cli import main


def _clo(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "clo.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


@pytest.mark.parametrize("content", [None, "de: [1, 2\n", "- just\n- a list\n"])
def test_a_bad_languages_file_in_the_environment_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "langs.yaml"
    if content is not None:
        path.write_text(content)
    res = _clo("languages", "de", env={"CLO_LANGUAGES": str(path)})
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("clo: error: $CLO_LANGUAGES: ") and str(path) in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr  # PyYAML's own message is several lines
    if content is None:
        assert res.stderr.strip().splitlines() == [f"clo: error: $CLO_LANGUAGES: {path}: no such languages file"]


def test_a_refused_data_build_leaves_the_directory_as_it_found_it(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "Hi", "output": "Hello"}, {"instruction": 5')
    out = tmp_path / "new"
    argv = ["data", "build", "--source", "alpaca", "--path", str(bad), "--lang", "de", "--n", "2", "--no-progress"]
    assert main([*argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{bad}:1:" in err
    assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main([*argv, "--output", str(mine)]) == 2
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_a_refused_build_keeps_the_record_of_a_finished_build(tmp_path, capsys):
    """A directory holding a finished build of other inputs is refused with no change at all."""
    out = tmp_path / "built"
    out.mkdir()
    (out / "train.jsonl").write_text('{"id": "a"}\n')
    record = {"fingerprint": "0" * 16, "inputs": {"lang": "fr"}}
    (out / "build.json").write_text(json.dumps(record))
    src = tmp_path / "ok.json"
    src.write_text(json.dumps([{"instruction": "Hi", "output": "Hello"}]))
    assert main(["data", "build", "--source", "alpaca", "--path", str(src), "--lang", "de", "--n", "1",
                 "--no-progress", "--output", str(out)]) == 2
    assert "holds a build of another configuration" in capsys.readouterr().err
    assert json.loads((out / "build.json").read_text()) == record
    assert sorted(p.name for p in out.iterdir()) == ["build.json", "train.jsonl"]
