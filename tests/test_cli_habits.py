"""What a practitioner's CLI habits meet: "did you mean" for commands and grid keys, errors named
after the --set flag that caused them, duplicate YAML keys refused with file and line, and
``clo data view --output`` writing only the formats its suffix names."""

import json

import pytest

from clo import cli
from clo.config import ConfigError, load_config
from clo.experiments.config import load_grid


def test_unknown_commands_suggest_the_closest(capsys):
    for argv, hint in ((["trian"], "'train'"), (["-v", "evl"], "'eval'"), (["lang"], "'languages'")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"did you mean {hint}?" in err and "known: data, train, eval" in err
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'; known:" in capsys.readouterr().err


def test_set_errors_name_the_flag_not_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.001\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(f, ["train.beta=abc"])
    assert str(e.value).startswith("--set train.beta=abc: train.beta: ")
    # A section set as a whole: its keys' errors name that flag.
    with pytest.raises(ConfigError) as e:
        load_config(f, ["train={lrr: 1}"])
    assert str(e.value) == "--set train={lrr: 1}: train.lrr: unknown key; did you mean train.lr?"
    # The file's own mistakes stay the file's.
    f.write_text("train:\n  lr: fast\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(f, ["train.beta=0.2"])
    assert str(e.value).startswith(f"{f}: train.lr: ")


def test_grid_keys_suggest_and_name_the_flag():
    with pytest.raises(ConfigError) as e:
        load_grid("configs/tiny.yaml", ["base.train.lrr=1"])
    assert str(e.value) == "--set base.train.lrr=1: base.train.lrr: unknown key; did you mean base.train.lr?"
    with pytest.raises(ConfigError) as e:
        load_grid("configs/tiny.yaml", ["sizez=[200]"])
    assert str(e.value) == "--set sizez=[200]: sizez: unknown key; did you mean sizes?"


def test_duplicate_yaml_keys_are_refused_with_file_and_line(tmp_path, capsys):
    f = tmp_path / "dup.yaml"
    f.write_text("train:\n  lr: 0.001\n  beta: 0.1\n  lr: 0.002\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value) == f"{f}:4: lr: given twice (first on line 2); keep one"
    assert cli.main(["train", "-c", str(f), "--data", "x.jsonl"]) == 2
    assert f"{f}:4: lr: given twice" in capsys.readouterr().err
    # The same key in two sections is no duplicate.
    f.write_text("train:\n  lr: 0.001\ndata:\n  n: 3\neval:\n  limit: 3\n", encoding="utf-8")
    assert load_config(f).train.lr == 0.001


def test_data_view_output_suffix_decides_the_format(tmp_path, capsys):
    rec = {"id": "a", "source": "alpaca", "tgt_lang": "de", "x_en": "Hi?", "y_en": "Hello.", "x_tgt": "Hallo?",
           "y_tgt": "Guten Tag.", "meta": {}}
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(rec) + "\n", encoding="utf-8")
    out = tmp_path / "view.txt"
    assert cli.main(["data", "view", str(data), "--view", "sft", "--output", str(out)]) == 2
    assert "unsupported output suffix .txt; use .jsonl (JSON lines), .json (one JSON list) or .parquet" in \
        capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["data", "view", str(data), "--view", "dop", "--output", str(tmp_path / "v.jsonl")]) == 2
    assert "did you mean 'dpo'?" in capsys.readouterr().err
    for name in ("v.jsonl", "v.json"):
        assert cli.main(["data", "view", str(data), "--view", "sft", "--output", str(tmp_path / name)]) == 0
    # sft: one English and one target-language row per record; the same rows either way.
    lines = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in lines] == ["a/en", "a/de"]
    assert json.loads((tmp_path / "v.json").read_text(encoding="utf-8")) == lines
