"""Hostile names (``../../x``, ``a/b``, ``CON``, a NUL byte, ...) fed through every command that
writes files: each either keeps its files inside its output directory or refuses with one line."""

import json

import pytest

from clo.cli import main
from clo.paths import UnsafeName, inside, safe_name

HOSTILE = ["../../x", "../../../../../../evx", "a/b", "a\\b", "CON", "nul.json", "\x00", "x\x1fy", "..", ".",
           "", " ", "trailing.", "x" * 300, ".hidden"]


@pytest.mark.parametrize("name", HOSTILE)
def test_safe_name_refuses(name):
    with pytest.raises(UnsafeName) as e:
        safe_name(name, "record id")
    msg = str(e.value)
    assert msg.startswith("record id ") and "\n" not in msg and "\x00" not in msg


@pytest.mark.parametrize("name", ["belebele-de", "alpacaeval-outputs-sw", "smollm2-135m-instruct", "n1000",
                                  "clo-full_v2+x", "über", "中文"])
def test_safe_name_keeps_ordinary_names(name):
    assert safe_name(name) == name
    assert inside("/out", name, "x") .as_posix() == f"/out/{name}/x"


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """``tmp_path/cwd`` is the working directory and ``tmp_path/cwd/out`` the output directory; the
    check is that no file appears anywhere under ``tmp_path`` but in ``out``."""
    cwd = tmp_path / "a" / "b" / "cwd"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("CLO_CACHE", str(cwd / "out" / "cache"))
    return tmp_path, cwd, cwd / "out"


def _files(root):
    return {p for p in root.rglob("*") if p.is_file()}


def _check(sandbox, before, capsys, rc, expect_error: bool):
    root, _, out = sandbox
    stray = sorted(str(p) for p in _files(root) - before if out not in p.parents)
    assert stray == []
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if expect_error:
        assert rc == 2
        lines = [ln for ln in err.splitlines() if ln.startswith("clo ") or "error" in ln.lower()]
        assert len(lines) == 1, err


def _hostile_records(lang="de"):
    ids = ["../../x", "a/b", "CON", "nul\x00", "..", "x" * 300]
    words = {"en": "What is the capital of Germany today", "de": "Was ist heute die Hauptstadt von Deutschland"}
    return [{"id": rid, "tgt_lang": lang, "x_en": f"{words['en']} {i}?", "y_en": f"It is Berlin, answer {i}.",
             "x_tgt": f"{words['de']} {i}?", "y_tgt": f"Es ist Berlin, Antwort {i}."} for i, rid in enumerate(ids)]


def test_data_commands_keep_hostile_ids_inside_the_output(sandbox, capsys):
    root, cwd, out = sandbox
    rows = _hostile_records()
    (cwd / "par.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = _files(root)
    # data check: the ids go into the records, never into a path.
    rc = main(["data", "check", "par.jsonl", "--lang", "de", "--output", str(out / "checked")])
    _check(sandbox, before, capsys, rc, expect_error=False)
    # data build (identity translator: no model), ids from a ShareGPT file.
    chats = [{"id": r["id"], "conversations": [{"from": "human", "value": r["x_en"]},
                                               {"from": "gpt", "value": r["y_en"]}]} for r in rows]
    (cwd / "chats.json").write_text(json.dumps(chats))
    before = _files(root)
    rc = main(["data", "build", "--source", "sharegpt", "--path", "chats.json", "--lang", "de", "--n", "6",
               "--no-progress", "--output", str(out / "built"), "--set", "data.translator.kind=identity"])
    _check(sandbox, before, capsys, rc, expect_error=False)
    assert (out / "built" / "build.json").is_file()
    # data view of the hostile records, to a file in out.
    before = _files(root)
    rc = main(["data", "view", "par.jsonl", "--view", "dpo", "--output", str(out / "dpo.jsonl")])
    _check(sandbox, before, capsys, rc, expect_error=False)
    assert rc == 0 and (out / "dpo.jsonl").is_file()
    # A hostile language code is refused before anything is written.
    for lang in ("../../x", "CON", "de/../../x"):
        before = _files(root)
        rc = main(["data", "build", "--source", "sharegpt", "--path", "chats.json", "--lang", lang, "--n", "2",
                   "--no-progress", "--output", str(out / "b2"), "--set", "data.translator.kind=identity"])
        _check(sandbox, before, capsys, rc, expect_error=True)
        assert not (out / "b2").exists()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from clo.testing import tiny_model, tiny_tokenizer

    d = tmp_path_factory.mktemp("names-model")
    tiny_model("llama", vocab_size=512).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


def test_train_and_eval_keep_hostile_names_inside(sandbox, tiny_dir, capsys, shared_data):
    root, cwd, out = sandbox
    (cwd / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _hostile_records()))
    common = ["--set", f"model={tiny_dir}", "--set", "train.max_length=64", "--set", "train.batch_size=6",
              "--set", f"train.reference_cache={out / 'ref'}", "--no-progress"]
    before = _files(root)
    rc = main(["train", "--data", "train.jsonl", "--lang", "de", "--output", str(out / "run"), *common])
    _check(sandbox, before, capsys, rc, expect_error=False)
    assert rc == 0 and (out / "run" / "best" / "config.json").is_file()
    for lang in ("../../x", "CON", "\x00"):
        before = _files(root)
        rc = main(["train", "--data", "train.jsonl", "--lang", lang, "--output", str(out / "run2"), *common])
        _check(sandbox, before, capsys, rc, expect_error=True)
    for lang in ("../../x", "nul"):
        before = _files(root)
        rc = main(["eval", "belebele", "--model", str(tiny_dir), "--lang", lang, "--limit", "1",
                   "--data-dir", str(shared_data), "--output", str(out / "ev"), "--no-progress"])
        _check(sandbox, before, capsys, rc, expect_error=True)
    # An evaluation's output name (a grid job's opts.name reaches it) is a file name, not a path.
    from clo.config import load_config
    from clo.eval import evaluate

    cfg = load_config(None, [f"eval.data_dir={shared_data}", "lang=de"])
    for name in ("../../../../../../evx", "a/b", "CON"):
        before = _files(root)
        with pytest.raises(UnsafeName, match="evaluation output name"):
            evaluate("belebele", str(tiny_dir), cfg, out / "ev", name=name, limit=1)
        assert _files(root) - before <= {p for p in _files(root) if out in p.parents}


def test_grid_run_report_and_push_refuse_hostile_names(sandbox, capsys, monkeypatch):
    root, cwd, out = sandbox
    base = {"name": "g", "models": [{"name": "tiny", "spec": "smollm2-135m-instruct"}], "methods": ["clo"],
            "langs": ["de"], "output_dir": str(out / "grid")}
    cases = [
        {**base, "eval_jobs": [{"task": "belebele", "opts": {"name": "../../../../../../evx"}}]},
        {**base, "eval_jobs": [{"task": "belebele", "opts": {"name": "CON"}}]},
        {**base, "models": [{"name": "../../m", "spec": "smollm2-135m-instruct"}]},
        {**base, "methods": [{"name": "a/b", "method": "clo"}]},
        {**base, "langs": ["../x"]},
    ]
    for i, grid in enumerate(cases):
        path = cwd / f"grid{i}.json"
        path.write_text(json.dumps(grid))
        (cwd / f"grid{i}.yaml").write_text(path.read_text())  # JSON is YAML
        before = _files(root)
        rc = main(["run", str(cwd / f"grid{i}.yaml"), "--dry-run"])
        _check(sandbox, before, capsys, rc, expect_error=True)
        assert not (out / "grid").exists()
    # report: a grid directory with hostile run ids in its plan writes only into its output.
    gdir = cwd / "grid-x"
    gdir.mkdir()
    (gdir / "plan.json").write_text(json.dumps({"runs": [{"run_id": "../../../evil", "model": "m", "lang": "de",
                                                         "variant": "clo", "evals": []}]}))
    before = _files(root)
    rc = main(["report", str(gdir), "--output", str(out / "report")])
    _check(sandbox, before, capsys, rc, expect_error=rc != 0)
    # push: a hostile repo id is refused before any request.
    d = out / "data"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text('{"id": "a"}\n')
    monkeypatch.setenv("HF_TOKEN", "hf_t")
    for repo in ("../../x", "a/b/c", "me/CON\x00", ""):
        before = _files(root)
        rc = main(["push", str(d), "--repo", repo, "--endpoint", "http://127.0.0.1:9"])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert _files(root) == before
