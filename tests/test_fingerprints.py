"""Stage outputs carry the fingerprint of what made them: `clo data build` and
`clo eval` refuse an output made by other inputs, naming the differing keys, unless told to
start over (`--overwrite`); the same inputs resume; the grid starts over on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clo.cli import main

# ---------------------------------------------------------------------------------------------
# clo data build


@pytest.fixture(scope="module", autouse=True)
def fake_de():
    """An offline translator writing German-looking text (the language check passes)."""
    from clo.data import translators as T
    from clo.data.testing import fake_german

    class FakeDe(T.Translator):
        kind = "fp-fake-de"

        def fingerprint(self):
            return "fp-fake-de/v1"

        def translate_batch(self, texts, src, tgt):
            return [fake_german(t) for t in texts]

    T.register_translator("fp-fake-de", FakeDe, replace=True)
    yield
    T.TRANSLATORS.pop("fp-fake-de", None)


def _alpaca(path: Path, n: int, word: str = "dog") -> Path:
    rows = [{"instruction": f"Write sentence number {i} about a {word}.", "input": "",
             "output": f"Here is sentence {i}. The {word} sleeps in the garden and dreams of bones."}
            for i in range(n)]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _build(src: Path, out: Path, *extra: str) -> int:
    return main(["data", "build", "--source", "alpaca", "--path", str(src), "--lang", "de", "--translator",
                 "fp-fake-de", "--out", str(out), "--no-progress", "--set", "data.subsets=[2,3]",
                 "--set", "data.val_fraction=0.2", *extra])


def _one_error(capsys, prefix: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, err
    return lines[0].removeprefix(prefix)


def _refusal(where, keys: str, what: str = "a build") -> str:
    return (f"{where} holds {what} of another configuration (differing: {keys}); pass --overwrite to start "
            f"over there, or choose another output directory")


def test_data_build_refuses_other_inputs_and_overwrite_rebuilds(tmp_path, capsys):
    src, out = _alpaca(tmp_path / "a.json", 8), tmp_path / "data"
    assert _build(src, out, "--n", "6") == 0
    capsys.readouterr()
    record = json.loads((out / "build.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fingerprint"] == record["fingerprint"]
    assert record["inputs"]["data"]["n"] == 6 and record["inputs"]["lang"] == "de"
    assert len(record["inputs"]["source"]["sha256"]) == 64
    train = (out / "train.jsonl").read_bytes()
    assert sorted(p.name for p in (out / "subsets").iterdir()) == ["train_2.jsonl", "train_3.jsonl"]

    # The same inputs resume (every segment from the cache), also with other operational settings.
    assert _build(src, out, "--n", "6", "--set", "data.translator.batch_size=3") == 0
    capsys.readouterr()
    again = json.loads((out / "summary.json").read_text())
    assert again["translation"]["translated"] == 0 and again["fingerprint"] == record["fingerprint"]
    assert (out / "train.jsonl").read_bytes() == train

    # Other inputs: refused, naming the keys, and nothing touched.
    assert _build(src, out, "--n", "3", "--set", "data.seed=7") == 2
    assert _one_error(capsys, "clo data build: ") == _refusal(out, "data.n, data.seed")
    _alpaca(src, 8, word="cat")  # the same file, other content
    assert _build(src, out, "--n", "6") == 2
    assert _one_error(capsys, "clo data build: ") == _refusal(out, "source.sha256")
    assert _build(src, out, "--n", "6", "--lang", "id") == 2
    assert _one_error(capsys, "clo data build: ") == _refusal(out, "lang, source.sha256")
    assert (out / "train.jsonl").read_bytes() == train
    assert json.loads((out / "build.json").read_text()) == record

    # --overwrite: built again from a clean output; the translation cache is kept.
    _alpaca(src, 8)
    assert _build(src, out, "--n", "3", "--overwrite") == 0
    capsys.readouterr()
    s = json.loads((out / "summary.json").read_text())
    assert s["records_in"] == 3 and s["translation"]["translated"] == 0  # all three were cached
    assert s["fingerprint"] != record["fingerprint"]
    assert json.loads((out / "build.json").read_text())["inputs"]["data"]["n"] == 3
    assert (out / "train.jsonl").read_bytes() != train
    # 2 train records now: the old train_3 subset is gone, not left beside the new build
    assert sorted(p.name for p in (out / "subsets").iterdir()) == ["train_2.jsonl"]
    assert (out / "translations.sqlite").is_file()


def test_data_build_refuses_outputs_without_their_build_record(tmp_path, capsys):
    src, out = _alpaca(tmp_path / "a.json", 4), tmp_path / "data"
    assert _build(src, out) == 0
    (out / "build.json").unlink()
    assert _build(src, out) == 2
    assert _one_error(capsys, "clo data build: ") == _refusal(out, "(no readable build.json)")
    assert _build(src, out, "--overwrite") == 0


def test_data_build_takes_over_a_directory_without_outputs(tmp_path, capsys):
    """A build that failed before writing its outputs claims nothing: other inputs may build there."""
    src, out = _alpaca(tmp_path / "a.json", 4), tmp_path / "data"
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert _build(empty, out) == 2
    assert "no alpaca examples" in _one_error(capsys, "clo data build: ")
    assert _build(src, out) == 0


def test_grid_data_build_starts_over_on_its_own(tmp_path):
    from clo.config import config_from_dict
    from clo.experiments.grid import _data_build

    src, out = _alpaca(tmp_path / "a.json", 6), tmp_path / "data"
    data = {"source": "alpaca", "path": str(src), "translator": {"kind": "fp-fake-de"}, "subsets": [2]}
    assert _data_build(config_from_dict({"lang": "de", "data": {**data, "n": 6}}), out)["records_in"] == 6
    assert _data_build(config_from_dict({"lang": "de", "data": {**data, "n": 4}}), out)["records_in"] == 4


# ---------------------------------------------------------------------------------------------
# clo eval


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from clo.testing import tiny_model, tiny_tokenizer

    d = tmp_path_factory.mktemp("fp-models")
    for seed in (0, 1):
        tiny_model("llama", seed=seed, vocab_size=512).save_pretrained(d / f"m{seed}")
        tiny_tokenizer().save_pretrained(d / f"m{seed}")
    return d


def _belebele_data(shared_data, root: Path, n: int = 3) -> Path:
    rows = [json.loads(x) for x in (shared_data / "belebele" / "deu_Latn.jsonl").read_text().splitlines()[:n]]
    for r in rows:
        r["flores_passage"] = r["flores_passage"][:100]
    path = root / "belebele" / "deu_Latn.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _belebele(model: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["eval", "belebele", "--model", str(model), "--lang", "de", "--data-dir", str(data),
                 "--output", str(out), "--template", "harness", *extra])


def test_eval_refuses_a_cache_of_other_settings_and_overwrite_starts_over(models, shared_data, tmp_path, capsys):
    data_file = _belebele_data(shared_data, tmp_path / "d")
    out = tmp_path / "o"
    result, cache = out / "belebele-de-harness.json", out / "belebele-de-harness.cache.jsonl"
    assert _belebele(models / "m0", tmp_path / "d", out) == 0
    doc = json.loads(result.read_text())
    fp = doc["fingerprint"]
    assert json.loads(cache.read_text().splitlines()[0]) == {"fingerprint": fp["key"], "inputs": fp["inputs"]}
    from clo.identity import model_identity

    # The cache knows the model by its content (no path: a moved checkpoint keeps its items).
    assert fp["inputs"]["model"] == model_identity(str(models / "m0")) and fp["inputs"]["opts"] == {"template": "harness"}
    assert doc["model"].startswith(f"{models / 'm0'}@")
    assert set(fp["inputs"]["data"]) == {"belebele/deu_Latn.jsonl"}
    capsys.readouterr()

    # The same settings resume (a smaller limit too: items are cached by id).
    assert _belebele(models / "m0", tmp_path / "d", out, "--limit", "2") == 0
    assert json.loads(result.read_text())["records"] == doc["records"][:2]
    capsys.readouterr()

    # Another model, another eval setting, other data: refused, naming the keys; nothing touched.
    before = cache.read_bytes()
    assert _belebele(models / "m1", tmp_path / "d", out) == 2
    assert _one_error(capsys, "clo eval: error: ") == _refusal(cache, "model.sha256", "an evaluation")
    assert _belebele(models / "m0", tmp_path / "d", out, "--set", "eval.seed=5") == 2
    assert _one_error(capsys, "clo eval: error: ") == _refusal(cache, "eval.seed", "an evaluation")
    rows = data_file.read_text(encoding="utf-8").splitlines()
    first = json.loads(rows[0])
    first["question"] = "Worum geht es?"
    data_file.write_text("\n".join([json.dumps(first, ensure_ascii=False), *rows[1:]]) + "\n", encoding="utf-8")
    assert _belebele(models / "m0", tmp_path / "d", out) == 2
    assert _one_error(capsys, "clo eval: error: ") == _refusal(cache, "data.belebele/deu_Latn.jsonl", "an evaluation")
    assert cache.read_bytes() == before

    # --overwrite: the cache starts over and the numbers are the other model's.
    assert _belebele(models / "m1", tmp_path / "d", out, "--overwrite") == 0
    capsys.readouterr()
    doc1 = json.loads(result.read_text())
    assert doc1["model"] != doc["model"] and doc1["fingerprint"]["key"] != fp["key"]
    assert [r["loglik"] for r in doc1["records"]] != [r["loglik"] for r in doc["records"]]
    assert len(cache.read_text().splitlines()) == 1 + 3
    assert json.loads(cache.read_text().splitlines()[0])["fingerprint"] == doc1["fingerprint"]["key"]


def test_eval_cache_whose_header_holds_no_inputs_is_refused(models, shared_data, tmp_path, capsys):
    _belebele_data(shared_data, tmp_path / "d", n=2)
    out = tmp_path / "o"
    out.mkdir()
    cache = out / "belebele-de-harness.cache.jsonl"
    cache.write_text('{"fingerprint": "0123"}\n{"key": "0:x", "value": {}}\n', encoding="utf-8")
    assert _belebele(models / "m0", tmp_path / "d", out) == 2
    assert _one_error(capsys, "clo eval: error: ") == _refusal(
        cache, "(fingerprint)", "an evaluation")
    assert _belebele(models / "m0", tmp_path / "d", out, "--overwrite") == 0
    assert json.loads((out / "belebele-de-harness.json").read_text())["metrics"]["n"] == 2


def test_eval_generation_options_and_prompt_files_are_in_the_key(models, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hallo, wie geht es dir?\nErzähl mir etwas über Berlin.\n", encoding="utf-8")
    out = tmp_path / "o"
    cache = out / "fidelity-de.cache.jsonl"

    def fidelity(*extra):
        return main(["eval", "fidelity", "--model", str(models / "m0"), "--lang", "de", "--prompts-file",
                     str(prompts), "--output", str(out), "--set", "eval.temperature=0", *extra])

    assert fidelity("--max-new-tokens", "2") == 0
    capsys.readouterr()
    short = json.loads((out / "fidelity-de.json").read_text())
    assert fidelity("--max-new-tokens", "6") == 2
    assert _one_error(capsys, "clo eval: error: ") == _refusal(cache, "opts.max_new_tokens", "an evaluation")
    prompts.write_text("Guten Morgen!\nErzähl mir etwas über Berlin.\n", encoding="utf-8")
    assert fidelity("--max-new-tokens", "2") == 2
    assert _one_error(capsys, "clo eval: error: ") == _refusal(cache, "data.prompts_file", "an evaluation")
    assert fidelity("--max-new-tokens", "6", "--overwrite") == 0
    capsys.readouterr()
    long = json.loads((out / "fidelity-de.json").read_text())
    assert long["fingerprint"]["inputs"]["opts"]["max_new_tokens"] == 6
    assert [r["response"] for r in long["records"]] != [r["response"] for r in short["records"]]


def test_grid_evaluation_starts_over_on_its_own(models, shared_data, tmp_path):
    from clo.config import load_config
    from clo.experiments.grid import _evaluate

    _belebele_data(shared_data, tmp_path / "d", n=2)
    cfg = load_config(None, ["lang=de", f"eval.data_dir={tmp_path / 'd'}"])
    m0 = _evaluate("belebele", str(models / "m0"), cfg, tmp_path / "o", {"template": "harness"})
    m1 = _evaluate("belebele", str(models / "m1"), cfg, tmp_path / "o", {"template": "harness"})
    assert m0["n"] == m1["n"] == 2
    doc = json.loads((tmp_path / "o" / "belebele-de-harness.json").read_text())
    assert doc["model"].startswith(str(models / "m1"))
