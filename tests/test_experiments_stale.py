"""Nothing stale: on a finished grid, a changed input reruns exactly the stages
that depend on it, from a clean output, and the new numbers reach the report.

Real stages on a tiny random Llama: the data build (alpaca file -> identity translator), SFT,
BELEBELE (German and English), the report. Each step changes one thing of a finished grid (a
training setting, an evaluation option, the source file, the model's weights) and checks what
ran, that the weights / scores / tables are the new ones, and that what did not depend on the
change kept its numbers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from clo.experiments.config import grid_from_dict
from clo.experiments.grid import StageFunctions, run_grid
from clo.experiments.stages import read_marker, started_path

RUN = "runs/tiny/de/sft/nall"
BASE = "runs/tiny/de/base"


def _save_tiny(d: Path, seed: int) -> Path:
    from clo.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model("llama", seed=seed, vocab_size=512)
    model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id = (
        tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny random Llamas with the same tokenizer and different weights."""
    return (_save_tiny(tmp_path_factory.mktemp("tiny-a"), 0), _save_tiny(tmp_path_factory.mktemp("tiny-b"), 1))


def _source(path: Path, n: int, variant: str = "") -> Path:
    rows = [{"instruction": f"Write sentence number {i} about a dog{variant}.", "input": "",
             "output": f"Here is sentence {i}{variant}. The dog sleeps in the garden and dreams of bones."}
            for i in range(n)]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _tree(tmp_path: Path, model_dir: Path, src: Path, shared_data: Path, *, lr: float = 1e-3,
          en_limit: int = 4) -> dict:
    return {
        "name": "stale", "output_dir": str(tmp_path / "grid"),
        "models": [{"name": "tiny", "spec": str(model_dir)}],
        "langs": ["de"], "methods": ["sft"], "sizes": [None], "include_base": True,
        "eval_jobs": [{"task": "belebele", "opts": {"limit": 4}},
                      {"task": "belebele", "lang": "en", "opts": {"limit": en_limit}}],
        "base": {
            "data": {"source": "alpaca", "path": str(src), "n": 8, "val_fraction": 0.25, "subsets": [4, 8],
                     "translator": {"kind": "identity"}, "checks": {"langid": False}},
            "train": {"batch_size": 4, "max_length": 96, "epochs": 1, "lr": lr, "min_lr": lr / 10,
                      "eval_every": 2, "dtype": "float32"},
            "eval": {"batch_size": 4, "data_dir": str(shared_data)},
        },
    }


def _run(tree: dict):
    res = run_grid(grid_from_dict(tree), StageFunctions(), progress=False)
    assert res.ok, res.failures
    return res


def _weights_sha(gdir: Path) -> str:
    h = hashlib.sha256()
    files = sorted((gdir / RUN / "train" / "best").glob("*.safetensors"))
    assert files
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def _result(gdir: Path, rel: str, marker: str) -> dict:
    m = read_marker(gdir / rel / f"{marker}.done.json")
    assert m is not None, f"{rel}/{marker}: no done-marker"
    return m["result"]


def _logliks(gdir: Path, rel: str, key: str) -> list:
    """The per-option log-likelihoods of every scored question: what the evaluation computed."""
    task, _, lang = key.rpartition("_")
    doc = json.loads((gdir / rel / "eval" / key / f"{task}-{lang}.json").read_text(encoding="utf-8"))
    return [r["loglik"] for r in doc["records"]]


def _table2(gdir: Path) -> dict[tuple[str, str], tuple[float, float]]:
    """report/table2_belebele.csv as {(eval lang, column): (accuracy %, its standard error)}."""
    rows = list(csv.DictReader((gdir / "report" / "table2_belebele.csv").open(encoding="utf-8")))
    return {(r["eval lang"], col): (float(r[col]), float(r[f"{col}_se"])) for r in rows for col in ("Base", "SFT")}


def _pct(metrics: dict) -> tuple[float, float]:
    return round(100 * metrics["accuracy"], 4), round(100 * metrics["stderr"], 4)


def _snapshot(gdir: Path) -> dict:
    return {
        "sha": _weights_sha(gdir),
        "train": _result(gdir, RUN, "train")["metrics"],
        "logliks": {(rel, key): _logliks(gdir, rel, key) for rel in (BASE, RUN)
                    for key in ("belebele_de", "belebele_en")},
        "evals": {(rel, key): _result(gdir, f"{rel}/eval", key) for rel in (BASE, RUN)
                  for key in ("belebele_de", "belebele_en")},
        "table2": _table2(gdir),
        "train_jsonl": (gdir / "data/de/train.jsonl").read_text(encoding="utf-8"),
    }


def _cache_lines(gdir: Path, rel: str, key: str) -> list[str]:
    task, _, lang = key.rpartition("_")
    return (gdir / rel / "eval" / key / f"{task}-{lang}.cache.jsonl").read_text(encoding="utf-8").splitlines()


def _translations(gdir: Path) -> int:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(gdir / "data/de/translations.sqlite")) as db:
        return db.execute("SELECT COUNT(*) FROM translations").fetchone()[0]


def _changed(old: dict, new: dict, col: str | None = None, lang: str | None = None) -> list:
    """The Table 2 cells (of column ``col`` / eval language ``lang``) whose numbers differ."""
    return [k for k in new if (col is None or k[1] == col) and (lang is None or k[0] == lang) and new[k] != old[k]]


def _assert_report_matches_markers(snap: dict) -> None:
    """Every cell of Table 2 is the number of the evaluation's current done-marker."""
    for (rel, key), metrics in snap["evals"].items():
        col = "Base" if rel == BASE else "SFT"
        assert snap["table2"][(key.rpartition("_")[2], col)] == _pct(metrics), (rel, key)


def test_a_changed_input_reruns_its_stages_from_a_clean_output(tmp_path, tiny_models, shared_data, caplog):
    model_dir = Path(shutil.copytree(tiny_models[0], tmp_path / "model"))
    src = _source(tmp_path / "alpaca.json", 8)
    gdir = tmp_path / "grid"
    tree = _tree(tmp_path, model_dir, src, shared_data)
    _run(tree)
    s0 = _snapshot(gdir)
    _assert_report_matches_markers(s0)
    assert _run(tree).ran == []  # finished: nothing to do

    # (a) A training setting: the SFT run trains again from scratch (the old result.json is not
    # returned), its evaluations and the report follow; data and the base model's do not.
    tree = _tree(tmp_path, model_dir, src, shared_data, lr=1e-1)
    # Sentinels: a stage that reruns starts from a clean output; the others' are untouched.
    for rel in (f"{RUN}/train", f"{BASE}/eval/belebele_de", "data/de"):
        (gdir / rel / "sentinel").write_text("old", encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clo.experiments.stages"):
        res = _run(tree)
    assert res.ran == ["train/tiny/de/sft/nall", "eval/tiny/de/sft/nall/belebele_de",
                       "eval/tiny/de/sft/nall/belebele_en", "report"]
    assert "changed: train.lr, train.min_lr" in caplog.text
    s1 = _snapshot(gdir)
    assert not (gdir / RUN / "train" / "sentinel").exists()
    assert (gdir / BASE / "eval/belebele_de/sentinel").is_file() and (gdir / "data/de/sentinel").is_file()
    assert s1["sha"] != s0["sha"]
    assert s1["train"]["best_val_loss"] != s0["train"]["best_val_loss"]
    # The marker's result is the new training's own (not the old losses beside the new lr).
    on_disk = json.loads((gdir / RUN / "train" / "result.json").read_text(encoding="utf-8"))
    assert on_disk["metrics"] == s1["train"]
    assert read_marker(gdir / RUN / "train.done.json")["inputs"]["train"]["lr"] == 1e-1
    for key in ("belebele_de", "belebele_en"):
        assert s1["logliks"][(RUN, key)] != s0["logliks"][(RUN, key)]
        assert s1["logliks"][(BASE, key)] == s0["logliks"][(BASE, key)]
    # The report's numbers: SFT's changed (with these seeds German 0 -> 50 %), Base's did not.
    assert _changed(s0["table2"], s1["table2"], "SFT") and not _changed(s0["table2"], s1["table2"], "Base")
    _assert_report_matches_markers(s1)

    # (b) An evaluation option: only that job reruns, for both models; the trained weights and
    # the other job keep their numbers.
    tree = _tree(tmp_path, model_dir, src, shared_data, lr=1e-1, en_limit=8)
    res = _run(tree)
    assert res.ran == ["eval/tiny/de/base/belebele_en", "eval/tiny/de/sft/nall/belebele_en", "report"]
    s2 = _snapshot(gdir)
    assert s2["sha"] == s1["sha"]
    for rel in (BASE, RUN):
        assert s2["evals"][(rel, "belebele_en")]["n"] == 8 and s1["evals"][(rel, "belebele_en")]["n"] == 4
        assert len(s2["logliks"][(rel, "belebele_en")]) == 8
        assert s2["logliks"][(rel, "belebele_de")] == s1["logliks"][(rel, "belebele_de")]
        assert len(_cache_lines(gdir, rel, "belebele_en")) == 1 + 8
    # English accuracy over 8 questions instead of 4 (here 0 -> 12.5 %); the German cells stay.
    assert _changed(s1["table2"], s2["table2"], lang="en") and not _changed(s1["table2"], s2["table2"], lang="de")
    _assert_report_matches_markers(s2)

    # (c) The file data.path names: the data is built again, and everything trained on it.
    assert _translations(gdir) == 16  # 8 prompts and 8 responses
    _source(src, 8, variant=" and a cat")
    res = _run(tree)
    assert res.ran == ["data/de", "train/tiny/de/sft/nall", "eval/tiny/de/sft/nall/belebele_de",
                       "eval/tiny/de/sft/nall/belebele_en", "report"]
    s3 = _snapshot(gdir)
    assert "and a cat" in s3["train_jsonl"] and "and a cat" not in s2["train_jsonl"]
    assert s3["sha"] != s2["sha"]
    assert s3["train"]["best_val_loss"] != s2["train"]["best_val_loss"]
    assert s3["logliks"][(RUN, "belebele_de")] != s2["logliks"][(RUN, "belebele_de")]
    assert s3["logliks"][(BASE, "belebele_de")] == s2["logliks"][(BASE, "belebele_de")]
    assert _changed(s2["table2"], s3["table2"], "SFT") and not _changed(s2["table2"], s3["table2"], "Base")
    _assert_report_matches_markers(s3)
    assert not (gdir / "data/de/sentinel").exists()
    # The translation cache is content-addressed: it survives the rebuild (the first source's
    # 16 segments and the edited one's 16).
    assert _translations(gdir) == 32

    # (d) The model, replaced in place (same spec): every stage after the data runs again.
    for f in tiny_models[1].iterdir():
        shutil.copy(f, model_dir / f.name)
    res = _run(tree)
    assert res.ran == ["eval/tiny/de/base/belebele_de", "eval/tiny/de/base/belebele_en", "train/tiny/de/sft/nall",
                       "eval/tiny/de/sft/nall/belebele_de", "eval/tiny/de/sft/nall/belebele_en", "report"]
    s4 = _snapshot(gdir)
    assert s4["sha"] != s3["sha"]
    for rel in (BASE, RUN):
        for key in ("belebele_de", "belebele_en"):
            assert s4["logliks"][(rel, key)] != s3["logliks"][(rel, key)], (rel, key)
    assert s4["train_jsonl"] == s3["train_jsonl"]
    assert _changed(s3["table2"], s4["table2"], "Base") and _changed(s3["table2"], s4["table2"], "SFT")
    _assert_report_matches_markers(s4)
    assert _run(tree).ran == []


def test_a_killed_training_resumes_from_its_checkpoint(tmp_path, tiny_models, shared_data, caplog):
    """No done-marker, partial output: the stage resumes from it (nothing is cleared)."""
    from clo.train import train

    src = _source(tmp_path / "alpaca.json", 8)
    tree = _tree(tmp_path, tiny_models[0], src, shared_data)
    tree.update(include_base=False, eval_jobs=[{"task": "belebele", "opts": {"limit": 2}}])
    gdir = tmp_path / "grid"

    def killed(cfg, tp, vp, out):
        train(cfg, tp, vp, out, stop_after_steps=1)  # one step, its state saved ...
        raise RuntimeError("killed")  # ... then the process dies

    res = run_grid(grid_from_dict(tree), StageFunctions(train=killed), progress=False)
    assert list(res.failures) == ["tiny/de/sft/nall"]
    assert not (gdir / RUN / "train.done.json").exists()
    assert read_marker(started_path(gdir / RUN / "train.done.json")) is not None
    state = gdir / RUN / "train" / "last" / "state.pt"
    assert state.is_file()
    steps_before = [json.loads(x)["step"] for x in (gdir / RUN / "train/log.jsonl").read_text().splitlines()]

    caplog.clear()
    with caplog.at_level(logging.INFO):
        res = _run(tree)
    assert res.ran == ["train/tiny/de/sft/nall", "eval/tiny/de/sft/nall/belebele_de", "report"]
    assert "resuming an unfinished run with the same inputs" in caplog.text
    assert f"resuming {gdir / RUN / 'train'} from step 1" in caplog.text
    # The first step's log lines are still there, followed by the rest of the run.
    steps_after = [json.loads(x)["step"] for x in (gdir / RUN / "train/log.jsonl").read_text().splitlines()]
    assert steps_after[: len(steps_before)] == steps_before and len(steps_after) > len(steps_before)
    assert _result(gdir, RUN, "train")["metrics"]["finished"] is True
    assert not started_path(gdir / RUN / "train.done.json").exists()
