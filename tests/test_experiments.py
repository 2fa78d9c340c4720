"""The grid config and the stage engine, with stage functions passed in (no models)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from clo.config_base import ConfigError
from clo.experiments.config import expand, grid_from_dict, load_grid
from clo.experiments.grid import StageFunctions, prebuilt_dataset, run_grid
from clo.experiments.stages import (
    changed_keys,
    clear_outputs,
    fingerprint,
    read_marker,
    run_stage,
    started_path,
)

FIXTURES = Path(__file__).parent / "fixtures" / "experiments"


def _grid(tmp_path: Path, **kw) -> dict:
    tree = {
        "name": "t",
        "output_dir": str(tmp_path / "grid"),
        "base": {"data": {"val_fraction": 0.25, "subsets": [4, 8]}, "eval": {"tasks": ["belebele"]}},
        "models": ["org/Tiny-1"],
        "langs": ["de"],
        "methods": ["sft", "clo"],
        "sizes": [4, None],
        "dataset": {"de": str(FIXTURES / "de_records.jsonl")},
    }
    tree.update(kw)
    return tree


def test_expand_crosses_axes_and_applies_variant_overrides(tmp_path):
    grid = grid_from_dict(_grid(
        tmp_path, langs=["de", "sw"], dataset={"de": "de.jsonl", "sw": "sw.jsonl"},
        methods=["sft", "clo", {"name": "clo-full", "method": "clo", "set": {"train.trainable": "full"}}]))
    runs = expand(grid)
    # 2 langs x (1 base + 3 variants x 2 sizes)
    assert len(runs) == 2 * (1 + 3 * 2)
    ids = [r.run_id for r in runs]
    assert ids[:7] == ["Tiny-1/de/base", "Tiny-1/de/sft/n4", "Tiny-1/de/sft/nall", "Tiny-1/de/clo/n4",
                       "Tiny-1/de/clo/nall", "Tiny-1/de/clo-full/n4", "Tiny-1/de/clo-full/nall"]
    by_id = {r.run_id: r for r in runs}
    assert by_id["Tiny-1/sw/clo-full/n4"].config.train.trainable == "full"
    assert by_id["Tiny-1/sw/clo-full/n4"].config.train.method == "clo"
    assert by_id["Tiny-1/sw/clo-full/n4"].config.lang == "sw"
    assert by_id["Tiny-1/sw/clo-full/n4"].ablation is True
    assert by_id["Tiny-1/de/clo/n4"].config.train.trainable == "attention"
    assert by_id["Tiny-1/de/sft/nall"].config.train.method == "sft"
    assert by_id["Tiny-1/de/sft/nall"].config.model == "org/Tiny-1"


@pytest.mark.parametrize("change, message", [
    ({"methods": ["sft", "nope"]}, "methods.1.method: Value error, unknown method 'nope'"),
    ({"methods": [{"name": "x", "method": "clo", "set": {"train.betta": 1}}]}, "methods.0 (x): train.betta: unknown key"),
    ({"methods": [{"name": "x", "method": "clo", "set": {"data.n": 5}}]}, "may not override 'data'"),
    ({"sizes": [5]}, "5 is not one of base.data.subsets [4, 8]"),
    ({"langs": ["xx"]}, "langs: Value error, unknown language code 'xx'"),
    ({"dataset": {"sw": "a.jsonl"}}, "dataset: no prebuilt file for ['de']"),
    ({"methods": ["clo", "clo"]}, "methods: duplicate entries ['clo']"),
    ({"eval_jobs": [{"task": "alpacaeval"}], "methods": ["clo"]}, "baseline: 'sft' is not one of the methods"),
    # Every cross-reference: tasks are registered ones, ...
    ({"eval_jobs": [{"task": "belebel"}]},
     "g.yaml: eval_jobs.0.task: Value error, unknown evaluation task 'belebel'; did you mean 'belebele'?"),
    ({"base": {"data": {"subsets": [4, 8]}, "eval": {"tasks": ["belebele", "mmlu"]}}},
     "g.yaml: base.eval.tasks.1: unknown evaluation task 'mmlu'; did you mean 'mmmlu'?"),
    # ... and a baseline named explicitly must exist even when no pairwise task reads it yet.
    ({"baseline": "dpo"}, "g.yaml: baseline: 'dpo' is not one of the methods (sft, clo)"),
    ({"epochs": 3}, "g.yaml: epochs: unknown key"),
    ({"base": {"model": "gpt2"}}, "g.yaml: base.model: set by the grid (models), not in base; remove it"),
])
def test_bad_grid_config_names_source_and_key(tmp_path, change, message):
    with pytest.raises(ConfigError) as e:
        grid_from_dict(_grid(tmp_path, **change), "g.yaml")
    assert message in str(e.value)
    assert str(e.value).startswith("g.yaml")


def test_load_grid_with_overrides_and_relative_dataset(tmp_path):
    (tmp_path / "d.jsonl").write_text("", encoding="utf-8")
    tree = _grid(tmp_path, dataset={"de": "d.jsonl"})
    import yaml

    (tmp_path / "g.yaml").write_text(yaml.safe_dump(tree), encoding="utf-8")
    grid = load_grid(tmp_path / "g.yaml", ["sizes=[8]", "base.train.lr=0.001"])
    assert grid.sizes == [8]
    assert grid.base.train.lr == 0.001
    assert grid.dataset == {"de": str(tmp_path / "d.jsonl")}


def test_prebuilt_dataset_split_and_nested_subsets(tmp_path):
    from clo.config import config_from_dict
    from clo.data.records import read_records

    cfg = config_from_dict({"lang": "de", "data": {"val_fraction": 0.25, "subsets": [4, 8, 16], "seed": 3}})
    out = prebuilt_dataset(FIXTURES / "de_records.jsonl", cfg, tmp_path)
    assert out["train"] == 9 and out["validation"] == 3  # round(12 * 0.25) = 3
    train = [r.id for r in read_records(tmp_path / "train.jsonl")]
    val = [r.id for r in read_records(tmp_path / "validation.jsonl")]
    every = [r.id for r in read_records(FIXTURES / "de_records.jsonl")]
    assert sorted(train + val) == sorted(every) and not set(train) & set(val)
    assert train == [i for i in every if i in set(train)]  # file order kept
    assert [r.id for r in read_records(tmp_path / "subsets" / "train_4.jsonl")] == train[:4]
    assert [r.id for r in read_records(tmp_path / "subsets" / "train_8.jsonl")] == train[:8]
    # 16 > 9 training records: the largest subset is the whole training split, named by its size
    assert [r.id for r in read_records(tmp_path / "subsets" / "train_9.jsonl")] == train
    assert not (tmp_path / "subsets" / "train_16.jsonl").exists()
    # Same seed, same split.
    out2 = prebuilt_dataset(FIXTURES / "de_records.jsonl", cfg, tmp_path / "again")
    assert (tmp_path / "again" / "validation.jsonl").read_text() == (tmp_path / "validation.jsonl").read_text()
    assert out2 == out


def test_prebuilt_dataset_wrong_language_names_line(tmp_path):
    from clo.config import config_from_dict
    from clo.data.records import RecordError

    cfg = config_from_dict({"lang": "sw"})
    with pytest.raises(RecordError, match=r"de_records.jsonl:1: field 'tgt_lang' is 'de', the grid expects 'sw'"):
        prebuilt_dataset(FIXTURES / "de_records.jsonl", cfg, tmp_path)


def test_run_stage_skips_when_inputs_match_and_reruns_when_changed(tmp_path):
    calls = []
    marker = tmp_path / "s.done.json"
    assert run_stage("s", marker, {"a": 1}, lambda: calls.append(1) or {"x": 1}) == ({"x": 1}, fingerprint({"a": 1}), True)
    assert run_stage("s", marker, {"a": 1}, lambda: calls.append(1) or {"x": 2}) == ({"x": 1}, fingerprint({"a": 1}), False)
    assert len(calls) == 1
    out, _, ran = run_stage("s", marker, {"a": 2}, lambda: calls.append(1) or {"x": 3})
    assert (out, ran, len(calls)) == ({"x": 3}, True, 2)
    assert read_marker(marker)["inputs"] == {"a": 2}
    assert not started_path(marker).exists()  # gone once the stage finished
    # A stage that raises writes no done state; the marker of the old inputs is gone too (its
    # result is not the current inputs'), and the started-marker says which inputs died.
    with pytest.raises(RuntimeError):
        run_stage("s", marker, {"a": 3}, lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert read_marker(marker) is None
    assert read_marker(started_path(marker))["inputs"] == {"a": 3}
    marker.write_text("{not json", encoding="utf-8")
    assert read_marker(marker) is None


def _outputs(root: Path) -> Path:
    out = root / "out"
    (out / "sub").mkdir(parents=True)
    (out / "partial.txt").write_text("old", encoding="utf-8")
    (out / "sub" / "x.bin").write_bytes(b"x")
    (out / "cache.sqlite").write_text("keep me", encoding="utf-8")
    return out


def test_run_stage_clears_outputs_only_when_the_inputs_changed(tmp_path):
    marker, out = tmp_path / "s.done.json", _outputs(tmp_path)
    seen = []

    def fn(tag):
        def run():
            seen.append(sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) if out.exists() else None)
            out.mkdir(exist_ok=True)
            (out / "partial.txt").write_text(tag, encoding="utf-8")
            return {"tag": tag}
        return run

    # A first run (no marker) keeps whatever partial files are there: they may be its own.
    run_stage("s", marker, {"a": 1}, fn("a1"), clear=[out])
    assert seen[-1] == ["cache.sqlite", "partial.txt", "sub", "sub/x.bin"]
    # Same inputs: skipped, nothing touched.
    assert run_stage("s", marker, {"a": 1}, fn("again"), clear=[out])[2] is False
    assert (out / "partial.txt").read_text(encoding="utf-8") == "a1" and len(seen) == 1
    # Changed inputs: the outputs go (except the kept globs) before the function runs.
    run_stage("s", marker, {"a": 2}, fn("a2"), clear=[out], keep=["*.sqlite"])
    assert seen[-1] == ["cache.sqlite"]
    assert read_marker(marker)["result"] == {"tag": "a2"}
    # Without keep the whole directory goes.
    run_stage("s", marker, {"a": 3}, fn("a3"), clear=[out])
    assert seen[-1] is None


def test_run_stage_resumes_a_killed_stage_and_clears_one_killed_with_other_inputs(tmp_path):
    marker, out = tmp_path / "s.done.json", _outputs(tmp_path)
    seen = []

    def killed():
        out.mkdir(exist_ok=True)
        (out / "step1").write_text("done", encoding="utf-8")
        raise KeyboardInterrupt  # a kill: nothing after this line runs

    def finish():
        seen.append(sorted(p.name for p in out.iterdir()))
        return {"ok": True}

    with pytest.raises(KeyboardInterrupt):
        run_stage("s", marker, {"a": 1}, killed, clear=[out])
    assert read_marker(marker) is None and read_marker(started_path(marker))["inputs"] == {"a": 1}
    # Same inputs again: the partial files are the stage's own, it resumes from them.
    run_stage("s", marker, {"a": 1}, finish, clear=[out])
    assert seen[-1] == ["cache.sqlite", "partial.txt", "step1", "sub"]
    assert not started_path(marker).exists()
    # Killed with other inputs, then rerun with yet others: the partial files are not theirs.
    with pytest.raises(KeyboardInterrupt):
        run_stage("s", marker, {"a": 2}, killed, clear=[out])
    assert read_marker(marker) is None  # the {"a": 1} result is gone with its outputs
    assert sorted(p.name for p in out.iterdir()) == ["step1"]
    run_stage("s", marker, {"a": 3}, lambda: finish() if out.exists() else seen.append(None), clear=[out])
    assert seen[-1] is None


def test_run_stage_ignored_keys_neither_rerun_nor_clear(tmp_path):
    marker, out = tmp_path / "s.done.json", _outputs(tmp_path)
    first = {"train": {"lr": 1, "micro_batch_size": 8}}
    _, fp, _ = run_stage("s", marker, first, lambda: {"r": 1}, clear=[out])
    # Only an ignored key changed: done, with the recorded fingerprint (downstream stays put).
    other = {"train": {"lr": 1, "micro_batch_size": 2}}
    assert run_stage("s", marker, other, lambda: {"r": 2}, clear=[out], ignore=["train.micro_batch_size"]) == (
        {"r": 1}, fp, False)
    assert (out / "partial.txt").is_file()
    # Killed, then resumed with another ignored value: the partial files stay.
    marker.unlink()
    with pytest.raises(KeyboardInterrupt):
        run_stage("s", marker, first, lambda: (_ for _ in ()).throw(KeyboardInterrupt), clear=[out])
    run_stage("s", marker, other, lambda: {"r": 3}, clear=[out], ignore=["train.micro_batch_size"])
    assert (out / "partial.txt").is_file() and read_marker(marker)["result"] == {"r": 3}
    # A key that is not ignored still clears.
    run_stage("s", marker, {"train": {"lr": 2, "micro_batch_size": 2}}, lambda: {"r": 4}, clear=[out],
              ignore=["train.micro_batch_size"])
    assert not out.exists()


def test_operational_settings_rerun_nothing_in_a_grid(tmp_path):
    run_grid(grid_from_dict(_grid(tmp_path)), FakeStages().functions(), progress=False)
    tree = _grid(tmp_path)
    tree["base"]["train"] = {"micro_batch_size": 1, "gradient_checkpointing": True}
    tree["base"]["eval"]["batch_size"] = 2
    tree["base"]["eval"]["tasks"] = ["belebele", "mmmlu"]  # the jobs, not eval.tasks, say what runs
    tree["eval_jobs"] = [{"task": "belebele", "opts": {"batch_size": 3}}]
    again = FakeStages()
    res = run_grid(grid_from_dict(tree), again.functions(), progress=False)
    assert res.ok and res.ran == [] and sum(again.calls.values()) == 0
    # A result-changing evaluation option does rerun (and only the evaluations).
    tree["eval_jobs"] = [{"task": "belebele", "opts": {"batch_size": 3, "limit": 2}}]
    limited = FakeStages()
    res = run_grid(grid_from_dict(tree), limited.functions(), progress=False)
    assert limited.calls["eval"] == 5 and limited.calls["train"] == 0 and limited.calls["data"] == 0


def test_data_build_fingerprints_the_source_content_and_a_local_model(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.json").write_text("[]", encoding="utf-8")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"w1")
    tree = _grid(tmp_path, models=[{"name": "m", "spec": str(model)}])
    del tree["dataset"]
    tree["base"]["data"]["path"] = str(src)
    built = []

    class Build(FakeStages):
        def build_data(self, cfg, out_dir):
            self.calls["data"] += 1
            built.append(sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else [])
            (out_dir / "subsets").mkdir(parents=True, exist_ok=True)
            for name in ("train.jsonl", "validation.jsonl", "subsets/train_4.jsonl"):
                (out_dir / name).write_text((FIXTURES / "de_records.jsonl").read_text(encoding="utf-8"))
            (out_dir / "translations.sqlite").write_text("cache", encoding="utf-8")
            (out_dir / "stray.txt").write_text("left by this build", encoding="utf-8")
            return {"train": 12}

    def run() -> FakeStages:
        fake = Build()
        assert run_grid(grid_from_dict(tree), fake.functions(), progress=False).ok
        return fake

    assert run().calls["data"] == 1
    assert sum(run().calls.values()) == 0
    # Another file in the source directory: rebuilt from a clean directory (but its translation
    # cache), retrained, re-evaluated.
    (src / "b.json").write_text("[]", encoding="utf-8")
    again = run()
    assert again.calls["data"] == 1 and again.calls["train"] == 4 and again.calls["eval"] == 4
    assert built[-1] == ["data.started.json", "translations.sqlite"]
    # The same bytes again: nothing.
    assert sum(run().calls.values()) == 0
    # The same bytes elsewhere: the source is its content, not its path.
    moved = tmp_path / "moved-src"
    src.rename(moved)
    tree["base"]["data"]["path"] = str(moved)
    assert sum(run().calls.values()) == 0
    # The model's weights replaced in place: every training and evaluation, not the data.
    (model / "model.safetensors").write_bytes(b"w2-longer")
    swapped = run()
    assert swapped.calls["data"] == 0 and swapped.calls["train"] == 4 and swapped.calls["eval"] == 5


def test_a_kill_while_clearing_clears_again(tmp_path):
    # The stage's directory holds its own markers (as data/<lang>/ and report/ do).
    out = _outputs(tmp_path)
    marker = out / "s.done.json"
    run_stage("s", marker, {"a": 1}, lambda: {"r": 1}, clear=[out])
    # Killed midway through clearing for {"a": 2}: the started-marker says so, and it survives
    # the clearing of its own directory.
    state = {"stage": "s", "fingerprint": fingerprint({"a": 2}), "inputs": {"a": 2}, "clearing": True}
    started_path(marker).write_text(json.dumps(state), encoding="utf-8")
    marker.unlink()
    seen = []
    run_stage("s", marker, {"a": 2}, lambda: seen.append(sorted(p.name for p in out.iterdir())) or {"r": 2},
              clear=[out], keep=["*.sqlite"])
    assert seen == [["cache.sqlite", "s.started.json"]]
    assert sorted(p.name for p in out.iterdir()) == ["cache.sqlite", "s.done.json"]


def test_clear_outputs_refuses_paths_outside_the_stage(tmp_path):
    (tmp_path / "stage").mkdir()
    (tmp_path / "precious.txt").write_text("x", encoding="utf-8")
    marker = tmp_path / "stage" / "s.done.json"
    for bad in (tmp_path, tmp_path / "precious.txt", tmp_path / "stage" / ".." / "precious.txt"):
        with pytest.raises(ValueError, match="refusing to clear"):
            clear_outputs(marker, [bad])
    assert (tmp_path / "precious.txt").is_file()
    assert clear_outputs(marker, [tmp_path / "stage" / "absent"]) == []


def test_changed_keys_names_the_dotted_keys():
    old = {"model": "m", "train": {"lr": 1e-3, "beta": 0.1, "epochs": 1}, "opts": {"limit": 4}}
    new = {"model": "m", "train": {"lr": 2e-3, "beta": 0.2, "epochs": 1}, "opts": {"limit": 4, "retries": 0}}
    assert changed_keys(old, new) == ["opts.retries", "train.beta", "train.lr"]
    assert changed_keys(old, old) == []


class FakeStages:
    """Counts every call; ``fail_eval_of`` makes evaluations of matching runs raise."""

    def __init__(self, fail_eval_of: str | None = None):
        self.calls: Counter = Counter()
        self.fail_eval_of = fail_eval_of
        self.seen_opts: list[dict] = []

    def functions(self) -> StageFunctions:
        return StageFunctions(build_data=self.build_data, prebuilt=self.prebuilt, train=self.train,
                              evaluate=self.evaluate, samples=self.samples, report=self.report,
                              translate_instructions=self.translate_instructions)

    def translate_instructions(self, cfg, lang, out_path, instructions_file=None):
        self.calls[f"translate:{lang}"] += 1
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps([{"instruction": f"[{lang}] hello"}]), encoding="utf-8")
        return {"n": 1}

    def build_data(self, cfg, out_dir):
        raise AssertionError("the grid has a prebuilt dataset; the build must not run")

    def prebuilt(self, path, cfg, out_dir):
        self.calls["data"] += 1
        return prebuilt_dataset(path, cfg, out_dir)

    def train(self, cfg, train_path, val_path, out_dir):
        self.calls["train"] += 1
        self.calls[f"train:{cfg.train.method}:{Path(train_path).name}"] += 1
        out_dir.mkdir(parents=True, exist_ok=True)
        n = len(Path(train_path).read_text(encoding="utf-8").splitlines())
        return {"checkpoint": str(out_dir / "best"), "metrics": {"n_train": n}}

    def evaluate(self, task, model, cfg, out_dir, opts):
        self.calls["eval"] += 1
        self.seen_opts.append({"task": task, "model": model, **opts})
        if self.fail_eval_of and self.fail_eval_of in str(model):
            raise RuntimeError("injected evaluation failure")
        return {"accuracy": 0.5, "stderr": 0.1, "n": 4}

    def samples(self, model, cfg, prompts):
        self.calls["samples"] += 1
        return [f"{Path(model).name}: {p}" for p in prompts]

    def report(self, grid_dir):
        self.calls["report"] += 1
        from clo.report import write_report

        return write_report(grid_dir)


def test_killed_grid_resumes_without_redoing_finished_stages(tmp_path):
    grid = grid_from_dict(_grid(tmp_path))
    # First attempt: every evaluation of the CLO runs fails (after CLO's training finished).
    first = FakeStages(fail_eval_of="/clo/")
    res = run_grid(grid, first.functions(), progress=False)
    assert not res.ok
    assert sorted(res.failures) == ["Tiny-1/de/clo/n4", "Tiny-1/de/clo/nall"]
    assert first.calls["data"] == 1
    assert first.calls["train"] == 4  # sft x 2 sizes, clo x 2 sizes
    assert first.calls["train:sft:train_4.jsonl"] == 1 and first.calls["train:sft:train.jsonl"] == 1
    gdir = tmp_path / "grid"
    failed = json.loads((gdir / "runs/Tiny-1/de/clo/n4/failed.json").read_text())
    assert failed["error"] == "RuntimeError: injected evaluation failure"
    assert "injected evaluation failure" in (gdir / "runs/Tiny-1/de/clo/n4/log.txt").read_text()
    report_md = (gdir / "report" / "report.md").read_text()
    assert "| Tiny-1/de/clo/n4 | failed |" in report_md

    # Rerun: only the two failed evaluations and the report run.
    second = FakeStages()
    res2 = run_grid(grid, second.functions(), progress=False)
    assert res2.ok, res2.failures
    assert second.calls["data"] == 0 and second.calls["train"] == 0
    assert second.calls["eval"] == 2
    assert sorted(o["model"] for o in second.seen_opts) == [
        str(gdir / "runs/Tiny-1/de/clo/n4/train/best"), str(gdir / "runs/Tiny-1/de/clo/nall/train/best")]
    assert sorted(res2.ran) == ["eval/Tiny-1/de/clo/n4/belebele_de", "eval/Tiny-1/de/clo/nall/belebele_de", "report"]
    assert not (gdir / "runs/Tiny-1/de/clo/n4/failed.json").exists()

    # A third run has nothing left to do.
    third = FakeStages()
    res3 = run_grid(grid, third.functions(), progress=False)
    assert res3.ran == [] and sum(third.calls.values()) == 0
    assert len(res3.skipped) == 1 + 4 + 5 + 1  # data, 4 trainings, 5 evaluations, report


def test_changed_training_setting_redoes_training_and_evaluation_only(tmp_path):
    run_grid(grid_from_dict(_grid(tmp_path)), FakeStages().functions(), progress=False)
    tree = _grid(tmp_path)
    tree["base"]["train"] = {"lr": 1e-4}
    again = FakeStages()
    res = run_grid(grid_from_dict(tree), again.functions(), progress=False)
    assert res.ok
    assert again.calls["data"] == 0
    assert again.calls["train"] == 4
    assert again.calls["eval"] == 4  # the base model's evaluation does not depend on training


def test_pairwise_jobs_get_the_baseline_of_the_same_size(tmp_path):
    tree = _grid(tmp_path, eval_jobs=[{"task": "belebele", "lang": "en"},
                                      {"task": "alpacaeval", "opts": {"limit": 5, "baseline_name": "SFT"}},
                                      {"task": "alpacaeval", "lang": "en"},
                                      {"task": "confusion", "only_langs": ["zh", "ko"]}],
                 methods=["sft", "clo", {"name": "clo-full", "method": "clo", "set": {"train.trainable": "full"}}],
                 samples=["Wie geht es dir?"])
    fake = FakeStages()
    res = run_grid(grid_from_dict(tree), fake.functions(), progress=False)
    assert res.ok, res.failures
    gdir = tmp_path / "grid"
    pairwise = [o for o in fake.seen_opts if o["task"] == "alpacaeval"]
    # only the two CLO variants (2 sizes x 2 alpacaeval jobs each) are compared; never the
    # baseline or the base model
    assert len(pairwise) == 8
    for o in pairwise:
        size = Path(o["model"]).parent.parent.name
        base = gdir / f"runs/Tiny-1/de/sft/{size}"
        assert o["baseline_name"] == ("SFT" if o["lang"] == "de" else str(base / "train/best"))  # a job's own wins
        key = f"alpacaeval_{o['lang']}"
        assert o["baseline_outputs"] == str(base / f"alpacaeval_outputs/{key}/alpacaeval-outputs-{o['lang']}.model_outputs.json")
        # German instructions are translated once for the grid; English ones are the originals.
        assert o.get("translated_file") == (str(gdir / "alpacaeval/instructions_de.json") if o["lang"] == "de" else None)
    assert sorted(o["lang"] for o in pairwise) == ["de"] * 4 + ["en"] * 4
    # The baseline answers once per size and job, for both variants compared with it; with the
    # options generation depends on (the judge's are not its business).
    outputs = [o for o in fake.seen_opts if o["task"] == "alpacaeval-outputs"]
    assert sorted((Path(o["model"]).parent.parent.name, o["lang"]) for o in outputs) == [
        ("n4", "de"), ("n4", "en"), ("nall", "de"), ("nall", "en")]
    assert all(o["model"].startswith(str(gdir / "runs/Tiny-1/de/sft/")) for o in outputs)
    de = next(o for o in outputs if o["lang"] == "de")
    assert de == {"task": "alpacaeval-outputs", "model": de["model"], "lang": "de", "limit": 5,
                  "translated_file": str(gdir / "alpacaeval/instructions_de.json")}
    assert fake.calls["translate:de"] == 1 and fake.calls["translate:en"] == 0
    assert {o["lang"] for o in fake.seen_opts if o["task"] == "belebele"} == {"en"}
    samples = json.loads((gdir / "runs/Tiny-1/de/base/samples.json").read_text())
    assert samples == [{"prompt": "Wie geht es dir?", "answer": "Tiny-1: Wie geht es dir?"}]
    plan = json.loads((gdir / "plan.json").read_text())
    by_id = {r["run_id"]: r for r in plan["runs"]}
    assert by_id["Tiny-1/de/clo/n4"]["evals"] == ["belebele_en", "alpacaeval_de", "alpacaeval_en"]
    assert by_id["Tiny-1/de/sft/n4"]["evals"] == ["belebele_en"]

    # A rerun does nothing; a retrained baseline answers again and every comparison is rejudged,
    # while the compared runs keep their training.
    again = FakeStages()
    assert run_grid(grid_from_dict(tree), again.functions(), progress=False).ok
    assert again.seen_opts == []
    tree["methods"][0] = {"name": "sft", "method": "sft", "set": {"train.lr": 1e-4}}
    retrained = FakeStages()
    assert run_grid(grid_from_dict(tree), retrained.functions(), progress=False).ok
    assert retrained.calls["train"] == 2 and retrained.calls["train:clo:train_4.jsonl"] == 0
    tasks = Counter(o["task"] for o in retrained.seen_opts)
    assert tasks["alpacaeval-outputs"] == 4 and tasks["alpacaeval"] == 8


def test_size_beyond_the_training_split_trains_on_all_of_it(tmp_path):
    # 12 records, 3 for validation: size 16 (a configured subset) exceeds the 9 training records.
    tree = _grid(tmp_path, sizes=[4, 16], methods=["sft"], include_base=False)
    tree["base"]["data"]["subsets"] = [4, 16]
    fake = FakeStages()
    res = run_grid(grid_from_dict(tree), fake.functions(), progress=False)
    assert res.ok, res.failures
    assert fake.calls["train:sft:train_4.jsonl"] == 1 and fake.calls["train:sft:train.jsonl"] == 1


def test_translate_instructions_writes_one_translation_per_instruction(tmp_path, shared_data):
    from clo.config import config_from_dict
    from clo.experiments.grid import translate_instructions

    cfg = config_from_dict({"lang": "de", "data": {"translator": {"kind": "identity"}},
                            "eval": {"data_dir": str(shared_data)}})
    out = translate_instructions(cfg, "de", tmp_path / "instructions_de.json")
    rows = json.loads((tmp_path / "instructions_de.json").read_text(encoding="utf-8"))
    english = json.loads((shared_data / "alpaca_eval" / "text_davinci_003.json").read_text(encoding="utf-8"))
    assert out["n"] == len(rows) == len(english) == 805
    assert [r["instruction_en"] for r in rows] == [e["instruction"] for e in english]
    assert all(r["instruction"] == r["instruction_en"] for r in rows)  # the identity translator


def test_clo_run_dry_run_lists_runs_and_evaluations(capsys, tmp_path, monkeypatch):
    from clo.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing is looked up on the hub
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # base.eval.data_dir is relative to where clo runs
    assert main(["run", "configs/tiny.yaml", "--dry-run", "--set", f"output_dir={tmp_path}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"grid tiny: 3 runs in {tmp_path}"
    assert [ln.split()[0] for ln in lines[1:4]] == ["smollm2-135m/de/base", "smollm2-135m/de/sft/nall",
                                                    "smollm2-135m/de/clo/nall"]
    assert lines[1].split(None, 1)[1] == "belebele_de, belebele_en, mmmlu_en, fidelity_de"
    # Then the estimate per stage and the checks: as shipped, the offline model and the local
    # evaluation data resolve, nothing to warn about.
    assert lines[4].startswith("estimate (19 stages to run, 0 already done; assumptions in ")
    assert [ln.split()[0] for ln in lines[6:11]] == ["data", "train", "eval", "pairwise", "report"]
    assert "checks: 0 error(s), 0 warning(s)" in lines
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # a dry run writes nothing
    # A model that cannot be resolved (not local, not offline, not cached, no hub) stops the dry run.
    assert main(["run", "configs/tiny.yaml", "--dry-run", "--set", f"output_dir={tmp_path}",
                 "--set", "models=[{name: x, spec: nobody/no-such-model}]"]) == 2
    err = capsys.readouterr()
    assert "checks: 1 error(s), 0 warning(s)" in err.out + err.err
    assert "models.0.spec: nobody/no-such-model: cannot be resolved" in err.out + err.err


def test_fidelity_without_benchmark_prompts_reads_the_held_out_prompts(tmp_path, shared_data):
    """Swahili has no Language Confusion Benchmark prompts: fidelity answers the run's held-out
    validation prompts (x_tgt of data/sw/validation.jsonl), and their content is an input."""
    rows = [json.loads(ln) for ln in (FIXTURES / "de_records.jsonl").read_text(encoding="utf-8").splitlines()]
    sw = tmp_path / "sw.jsonl"
    sw.write_text("".join(json.dumps({**r, "tgt_lang": "sw", "x_tgt": f"Swali {r['id']}"}) + "\n" for r in rows),
                  encoding="utf-8")
    tree = _grid(tmp_path, langs=["de", "sw"], dataset={"de": str(FIXTURES / "de_records.jsonl"), "sw": str(sw)},
                 eval_jobs=[{"task": "fidelity"}], sizes=[None],
                 base={"data": {"val_fraction": 0.25, "subsets": [4, 8]}, "eval": {"data_dir": str(shared_data)}})
    stages = FakeStages()
    run_grid(grid_from_dict(tree), stages.functions(), progress=False)
    by_lang = {o["lang"]: o for o in stages.seen_opts if o["task"] == "fidelity"}
    assert "held_out_file" not in by_lang["de"]  # German: the benchmark's prompts
    assert by_lang["sw"]["held_out_file"] == str(tmp_path / "grid" / "data" / "sw" / "validation.jsonl")
    marker = read_marker(tmp_path / "grid" / "runs" / "Tiny-1" / "sw" / "base" / "eval" / "fidelity_sw.done.json")
    assert len(marker["inputs"]["held_out"]) == 64  # the SHA-256 of the prompts, not their path

    # The task itself, on a tiny model: the held-out x_tgt are the prompts.
    from clo.config import load_config
    from clo.eval import evaluate
    from clo.testing import tiny_model, tiny_tokenizer

    held = tmp_path / "grid" / "data" / "sw" / "validation.jsonl"
    cfg = load_config(None, ["lang=sw", f"eval.data_dir={shared_data}", "eval.max_new_tokens=4"])
    m = evaluate("fidelity", (tiny_model("llama", vocab_size=512), tiny_tokenizer()), cfg, tmp_path / "ev",
                 held_out_file=str(held))
    assert m["n"] == 3
    doc = json.loads((tmp_path / "ev" / "fidelity-sw.json").read_text(encoding="utf-8"))
    assert all(r["prompt"].startswith("Swali fx-") for r in doc["records"])
    assert "Prompts: held-out records" in (tmp_path / "ev" / "fidelity-sw.md").read_text(encoding="utf-8")
    from clo.eval.core import EvalDataError

    with pytest.raises(EvalDataError, match="no prompts for sw .* give prompts_file="):
        evaluate("fidelity", (tiny_model("llama", vocab_size=512), tiny_tokenizer()), cfg, tmp_path / "ev2")


def test_clo_run_reports_configuration_errors(capsys, tmp_path):
    from clo.cli import main

    bad = tmp_path / "g.yaml"
    bad.write_text("models: [x]\nlangs: [de]\nmethods: [sft, clo]\nsizes: [7]\n", encoding="utf-8")
    assert main(["run", str(bad)]) == 2
    assert f"{bad}: sizes: 7 is not one of base.data.subsets" in capsys.readouterr().err


def test_edited_prompts_file_reruns_the_evaluations_that_read_it(tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["Wie geht es dir?"]), encoding="utf-8")
    tree = _grid(tmp_path, eval_jobs=[{"task": "fidelity", "opts": {"prompts_file": str(prompts)}}])
    run_grid(grid_from_dict(tree), FakeStages().functions(), progress=False)
    same = FakeStages()
    run_grid(grid_from_dict(tree), same.functions(), progress=False)
    assert same.calls["eval"] == 0
    prompts.write_text(json.dumps(["Wie geht es dir?", "Was ist los?"]), encoding="utf-8")
    edited = FakeStages()
    run_grid(grid_from_dict(tree), edited.functions(), progress=False)
    # Base model + sft and clo at two sizes: every fidelity evaluation reads the file.
    assert edited.calls["eval"] == 5 and edited.calls["train"] == 0


def test_a_moved_prebuilt_dataset_or_settings_a_stage_does_not_read_rerun_nothing(tmp_path):
    src = tmp_path / "a" / "de.jsonl"
    src.parent.mkdir()
    shutil.copy(FIXTURES / "de_records.jsonl", src)
    tree = _grid(tmp_path, dataset={"de": str(src)})
    assert run_grid(grid_from_dict(tree), FakeStages().functions(), progress=False).ok
    # The same bytes under another name, another translator (a prebuilt dataset translates
    # nothing) and another judge (no evaluation of this grid is judged): nothing runs again.
    moved = tmp_path / "b" / "records.jsonl"
    moved.parent.mkdir()
    src.rename(moved)
    tree["dataset"] = {"de": str(moved)}
    tree["base"]["data"]["translator"] = {"kind": "identity"}
    tree["base"]["eval"]["judge"] = {"model": "another-judge"}
    again = FakeStages()
    res = run_grid(grid_from_dict(tree), again.functions(), progress=False)
    assert res.ok and res.ran == [] and sum(again.calls.values()) == 0
    # What the split reads does rerun it, and everything trained on it (not the base model's
    # evaluation, which reads no data): other bytes ...
    lines = moved.read_text(encoding="utf-8").splitlines(keepends=True)
    moved.write_text("".join(lines[:-1]), encoding="utf-8")
    fewer = FakeStages()
    assert run_grid(grid_from_dict(tree), fewer.functions(), progress=False).ok
    assert (fewer.calls["data"], fewer.calls["train"], fewer.calls["eval"]) == (1, 4, 4)
    # ... or another validation share.
    tree["base"]["data"]["val_fraction"] = 0.5
    split = FakeStages()
    assert run_grid(grid_from_dict(tree), split.functions(), progress=False).ok
    assert (split.calls["data"], split.calls["train"], split.calls["eval"]) == (1, 4, 4)


def test_a_grid_directory_of_another_fingerprint_format_is_refused(tmp_path, capsys, monkeypatch):
    from clo.experiments.stages import MARKER_FORMAT, MarkerFormatError

    grid = grid_from_dict(_grid(tmp_path))
    assert run_grid(grid, FakeStages().functions(), progress=False).ok
    marker = tmp_path / "grid" / "runs" / "Tiny-1" / "de" / "sft" / "n4" / "train.done.json"
    assert read_marker(marker)["format"] == MARKER_FORMAT
    old = {k: v for k, v in read_marker(marker).items() if k != "format"}  # as clo wrote them before
    marker.write_text(json.dumps(old), encoding="utf-8")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "grid").rglob("*"))
    fake = FakeStages()
    with pytest.raises(MarkerFormatError, match=(
            rf"^{marker}: a stage marker of fingerprint format 1 \(1 such marker\(s\) in all\), written by "
            rf"another version of clo; this one writes format {MARKER_FORMAT} .* new output directory")):
        run_grid(grid, fake.functions(), progress=False)
    assert sum(fake.calls.values()) == 0
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "grid").rglob("*")) == before  # nothing cleared
    # The command says so in one line, before any check or stage, dry run or not.
    import yaml

    from clo.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(_grid(tmp_path)), encoding="utf-8")
    for extra in (["--dry-run"], ["--no-progress"]):
        assert main(["run", str(tmp_path / "g.yaml"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{marker}: a stage marker of fingerprint format 1" in err[0], err
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "grid").rglob("*")) == before


def test_baseline_of_another_grid_is_refused_by_the_dry_run(tmp_path, capsys, monkeypatch):
    from clo.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = Path(__file__).resolve().parents[1]
    args = ["run", str(repo / "configs" / "tiny.yaml"), "--dry-run", "--set", f"output_dir={tmp_path}"]
    assert main([*args, "--set", "baseline=dpo"]) == 2
    err = capsys.readouterr().err
    assert "configs/tiny.yaml: baseline: 'dpo' is not one of the methods (sft, clo)" in err
    assert main([*args, "--set", "baseline=clo"]) == 0


def test_dry_run_json_lists_every_planned_stage(tmp_path, capsys, monkeypatch):
    import yaml

    from clo.cli import main
    from clo.experiments.graph import grid_stages

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    model = tmp_path / "Tiny-1"  # a local checkpoint (offline, a hub id cannot be resolved)
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2,
                                                   "num_attention_heads": 4, "intermediate_size": 128}))
    tree = _grid(tmp_path, models=[str(model)], eval_jobs=[{"task": "belebele", "opts": {"template": "harness"}},
                                                           {"task": "alpacaeval", "opts": {"limit": 3}}])
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(tree), encoding="utf-8")
    assert main(["run", str(tmp_path / "g.yaml"), "--dry-run", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    grid = grid_from_dict(tree)
    assert doc["schema"] == 1 and doc["grid"] == "t" and doc["baseline"] == "sft"
    assert [s["name"] for s in doc["stages"]] == [s.name for s in grid_stages(grid)]
    by = {s["name"]: s for s in doc["stages"]}
    bel = by["eval/Tiny-1/de/clo/n4/belebele_de"]
    assert {k: bel[k] for k in ("kind", "run", "model", "lang", "variant", "method", "size", "task", "eval",
                                "eval_lang", "prompt_variant", "baseline", "done")} == {
        "kind": "eval", "run": "Tiny-1/de/clo/n4", "model": "Tiny-1", "lang": "de", "variant": "clo",
        "method": "clo", "size": 4, "task": "belebele", "eval": "belebele_de", "eval_lang": "de",
        "prompt_variant": "harness", "baseline": None, "done": False}
    judged = [s for s in doc["stages"] if s["kind"] == "pairwise"]
    # The CLO runs of both sizes, each against the SFT run of its size.
    assert [(s["run"], s["baseline"], s["task"]) for s in judged] == [
        ("Tiny-1/de/clo/n4", "Tiny-1/de/sft/n4", "alpacaeval"),
        ("Tiny-1/de/clo/nall", "Tiny-1/de/sft/nall", "alpacaeval")]
    assert judged[0]["deps"] == ["train/Tiny-1/de/clo/n4", "train/Tiny-1/de/sft/n4",
                                 "baseline-outputs/Tiny-1/de/sft/n4/alpacaeval_de", "instructions/instructions_de"]
    assert judged[0]["prompt_variant"] is None  # AlpacaEval has no prompt variants
    assert judged[0]["resources"] == {"gpus_per_node": 1, "nodes": 1, "cpus_per_task": 8, "timeout_min": 480}
    assert by["report"]["resources"]["gpus_per_node"] == 0  # launcher.stages.report
    assert judged[0]["estimate"]["api_model"] == "gpt-4o" and judged[0]["estimate"]["api_tokens_in"] > 0
    assert doc["estimate"]["to_run"] == len(doc["stages"]) and doc["estimate"]["done"] == 0
    assert all(set(c) == {"check", "level", "where", "message"} for c in doc["checks"])
    # A problem found: still one JSON object, with the problem, and exit 2 as without --json.
    monkeypatch.delenv("OPENAI_API_KEY")
    assert main(["run", str(tmp_path / "g.yaml"), "--dry-run", "--json"]) == 2
    problems = [c for c in json.loads(capsys.readouterr().out)["checks"] if c["level"] == "error"]
    assert [(c["check"], c["where"]) for c in problems] == [
        ("api-keys", f"{tmp_path / 'g.yaml'}: base.eval.judge.api_key_env")]
    # Once run, the stages are done.
    run_grid(grid, FakeStages().functions(), progress=False)
    assert main(["run", str(tmp_path / "g.yaml"), "--dry-run", "--json"]) == 0
    assert all(s["done"] for s in json.loads(capsys.readouterr().out)["stages"])
    assert main(["run", str(tmp_path / "g.yaml"), "--json"]) == 2
    assert "--json goes with --dry-run" in capsys.readouterr().err


def test_evaluation_data_enters_by_content(tmp_path):
    """The files a task declares (BELEBELE's German file here) are inputs by their content: the
    data directory may move; an edited file reruns the evaluations that read it, and a setting only
    another task reads (MMMLU's answer length) reruns nothing."""
    from clo import languages
    from clo.eval.task import get_task

    data = tmp_path / "eval-data"
    (rel,) = [p.relative_to(data) for p in get_task("belebele").files(languages.get("de"), data, {})]
    (data / rel).parent.mkdir(parents=True)
    (data / rel).write_text('{"question": "1"}\n', encoding="utf-8")
    tree = _grid(tmp_path)
    tree["base"]["eval"]["data_dir"] = str(data)
    assert run_grid(grid_from_dict(tree), FakeStages().functions(), progress=False).ok
    moved = tmp_path / "elsewhere"
    data.rename(moved)
    tree["base"]["eval"]["data_dir"] = str(moved)
    tree["base"]["eval"]["mmmlu_max_new_tokens"] = 7
    same = FakeStages()
    assert run_grid(grid_from_dict(tree), same.functions(), progress=False).ran == []
    (moved / rel).write_text('{"question": "2"}\n', encoding="utf-8")
    edited = FakeStages()
    res = run_grid(grid_from_dict(tree), edited.functions(), progress=False)
    assert (edited.calls["eval"], edited.calls["train"], edited.calls["data"]) == (5, 0, 0)
    assert read_marker(tmp_path / "grid/runs/Tiny-1/de/base/eval/belebele_de.done.json")["inputs"]["data"] == {
        rel.as_posix(): {"sha256": hashlib.sha256(b'{"question": "2"}\n').hexdigest()}}
    assert res.ok


def test_a_failed_baseline_fails_the_comparisons_not_the_rest(tmp_path):
    tree = _grid(tmp_path, sizes=[None], eval_jobs=[{"task": "belebele"}, {"task": "alpacaeval"}])

    class SftFails(FakeStages):
        def train(self, cfg, train_path, val_path, out_dir):
            if cfg.train.method == "sft":
                raise RuntimeError("injected training failure")
            return super().train(cfg, train_path, val_path, out_dir)

    fake = SftFails()
    res = run_grid(grid_from_dict(tree), fake.functions(), progress=False)
    assert res.failures == {"Tiny-1/de/sft/nall": "RuntimeError: injected training failure",
                            "Tiny-1/de/clo/nall": ("RuntimeError: alpacaeval: train/Tiny-1/de/sft/nall, "
                                                   "baseline-outputs/Tiny-1/de/sft/nall/alpacaeval_de did not finish")}
    # CLO trained and was evaluated on what needs no baseline; nothing was judged, nor answered by SFT.
    assert "train/Tiny-1/de/clo/nall" in res.ran and "eval/Tiny-1/de/clo/nall/belebele_de" in res.ran
    assert not any(o["task"].startswith("alpacaeval") for o in fake.seen_opts)
    failed = json.loads((tmp_path / "grid/runs/Tiny-1/de/clo/nall/failed.json").read_text(encoding="utf-8"))
    assert failed["error"] == res.failures["Tiny-1/de/clo/nall"]
    # Fixed, the rerun trains SFT, judges CLO against it, and clears both records.
    again = FakeStages()
    assert run_grid(grid_from_dict(tree), again.functions(), progress=False).ok
    assert again.calls["train"] == 1 and [o["task"] for o in again.seen_opts] == ["belebele", "alpacaeval-outputs",
                                                                                  "alpacaeval"]
    assert not list((tmp_path / "grid/runs").rglob("failed.json"))
