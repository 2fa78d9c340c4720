"""An evaluation's item cache knows its model by clo.identity alone: a moved checkpoint keeps its
items, a cache written when models were keyed by their spec is refused, naming the key."""

from __future__ import annotations

import json
import shutil

import pytest


@pytest.fixture
def belebele_run(shared_data, tmp_path, monkeypatch):
    from clo.testing import tiny_model, tiny_tokenizer

    monkeypatch.setenv("CLO_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "a" / "model"
    tiny_model("llama", vocab_size=512, seed=0).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "data" / "belebele"
    data.mkdir(parents=True)
    rows = [json.loads(ln) for ln in (shared_data / "belebele" / "deu_Latn.jsonl").open(encoding="utf-8")][:2]
    (data / "deu_Latn.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def argv(model) -> list[str]:
        return ["eval", "belebele", "--model", str(model), "--lang", "de", "--data-dir", str(tmp_path / "data"),
                "--output", str(tmp_path / "out"), "--no-progress"]

    return model_dir, argv, tmp_path / "out"


def test_a_moved_checkpoint_reuses_its_cached_items(belebele_run, tmp_path, capsys, monkeypatch):
    from clo.cli import main
    from clo.identity import directory_identity

    model_dir, argv, out = belebele_run
    assert main(argv(model_dir)) == 0
    first = json.loads((out / "belebele-de.json").read_text())
    assert first["fingerprint"]["inputs"]["model"] == directory_identity(model_dir)
    moved = tmp_path / "b" / "model"
    shutil.move(str(model_dir), str(moved))

    import clo.eval.loglik as loglik

    def scored(*a, **k):
        raise AssertionError("a cached item was scored again")

    monkeypatch.setattr(loglik, "encode_pair", scored)
    capsys.readouterr()
    assert main(argv(moved)) == 0, capsys.readouterr().err
    second = json.loads((out / "belebele-de.json").read_text())
    assert second["fingerprint"]["key"] == first["fingerprint"]["key"]
    assert [r["loglik"] for r in second["records"]] == [r["loglik"] for r in first["records"]]
    assert second["model"].startswith(str(moved) + "@")  # results still say where the model was read


def test_a_cache_that_keyed_the_model_by_its_spec_is_refused(belebele_run, capsys):
    from clo.cli import main

    model_dir, argv, out = belebele_run
    assert main(argv(model_dir)) == 0
    cache = out / "belebele-de.cache.jsonl"
    lines = cache.read_text(encoding="utf-8").splitlines()
    head = json.loads(lines[0])
    assert isinstance(head["inputs"]["model"], dict)
    # As an earlier clo wrote it: the model as "<spec>@<digest>", another fingerprint.
    head["inputs"]["model"] = json.loads((out / "belebele-de.json").read_text())["model"]
    head["fingerprint"] = "0" * 64
    cache.write_text("\n".join([json.dumps(head), *lines[1:]]) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(argv(model_dir)) == 2
    err = capsys.readouterr().err
    assert f"{cache} holds an evaluation of another configuration (differing: model, model.files, model.sha256); pass --overwrite" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main([*argv(model_dir), "--overwrite"]) == 0


def test_one_model_identity_in_the_codebase():
    import subprocess
    from pathlib import Path

    import clo

    src = Path(clo.__file__).resolve().parents[1]
    found = subprocess.run(["grep", "-rn", "def model_identity", str(src)], capture_output=True, text=True).stdout
    assert [ln.split(":")[0] for ln in found.splitlines()] == [str(src / "clo" / "identity.py")]
    assert not (src / "clo" / "eval" / "identity.py").exists()
