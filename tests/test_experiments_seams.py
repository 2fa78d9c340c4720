"""The grid reads what a task needs from its declaration (clo.eval.task.Task), and names models by
their content (clo.identity): a task added in one module, moved and swapped model directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clo.eval.core import TaskResult
from clo.eval.task import TASKS, Option, Task, register
from clo.experiments.config import grid_from_dict
from clo.experiments.graph import grid_stages, held_out_prompts, run_jobs

FIXTURES = Path(__file__).parent / "fixtures" / "experiments"


def _grid(tmp_path: Path, **kw) -> dict:
    tree = {
        "name": "t", "output_dir": str(tmp_path / "grid"),
        "base": {"data": {"val_fraction": 0.25, "subsets": [4, 8]}, "eval": {"tasks": ["belebele"]}},
        "models": ["org/Tiny-1"], "langs": ["de"], "methods": ["sft", "clo"], "sizes": [4],
        "dataset": {"de": str(FIXTURES / "de_records.jsonl")},
    }
    tree.update(kw)
    return tree


def _never_run(ctx, **opts) -> TaskResult:
    raise AssertionError("the grid's plan runs nothing")


@pytest.fixture
def added_tasks():
    """Two tasks that no grid module names: one compared with the baseline, one reading the
    held-out records in German only."""
    pair = register(Task("duel", "a pairwise test task", _never_run, pairwise=True,
                         options=(Option("baseline", "the baseline model"),)))
    held = register(Task("heldish", "a held-out test task", _never_run,
                         options=(Option("held_out_file", "held-out records"),),
                         reads_held_out=lambda lang, data_dir, opts: lang.code == "de"
                         and not opts.get("held_out_file")))
    yield pair, held
    TASKS.pop("duel")
    TASKS.pop("heldish")


def test_a_task_declared_pairwise_is_compared_with_the_baseline(tmp_path, added_tasks):
    grid = grid_from_dict(_grid(tmp_path, eval_jobs=[{"task": "duel"}, {"task": "belebele"}]))
    stages = grid_stages(grid)
    pairwise = sorted(s.name for s in stages if s.kind == "pairwise")
    # Only the trained run that is not the baseline (sft) is compared, once, against sft of its size.
    assert pairwise == ["eval/Tiny-1/de/clo/n4/duel_de"]
    (stage,) = [s for s in stages if s.kind == "pairwise"]
    assert stage.baseline.run_id == "Tiny-1/de/sft/n4"
    assert "train/Tiny-1/de/sft/n4" in stage.deps
    # The judged task's AlpacaEval answers are not generated for a task that is not AlpacaEval.
    assert not [s for s in stages if s.kind == "baseline-outputs"]
    assert sorted(s.name for s in stages if s.kind == "eval") == [
        f"eval/Tiny-1/de/{r}/belebele_de" for r in ("base", "clo/n4", "sft/n4")]


def test_a_pairwise_task_needs_the_baseline_method(tmp_path, added_tasks):
    from clo.config_base import ConfigError

    with pytest.raises((ConfigError, ValueError), match="baseline: 'sft' is not one of the methods .*pairwise"):
        grid_from_dict(_grid(tmp_path, methods=["clo"], eval_jobs=[{"task": "duel"}]))


def test_held_out_records_follow_the_tasks_declaration(tmp_path, added_tasks):
    grid = grid_from_dict(_grid(tmp_path, langs=["de", "sw"], dataset={"de": "de.jsonl", "sw": "sw.jsonl"},
                                eval_jobs=[{"task": "heldish"}, {"task": "heldish", "opts": {"held_out_file": "x"}}]))
    from clo.experiments.config import expand

    found = {}
    for run in expand(grid):
        for job in run_jobs(grid, run):
            found[(run.run_id, job.task, bool(job.opts))] = held_out_prompts(grid, run, job)
    gdir = tmp_path / "grid" / "data"
    assert found[("Tiny-1/de/base", "heldish", False)] == gdir / "de" / "validation.jsonl"
    assert found[("Tiny-1/de/clo/n4", "heldish", False)] == gdir / "de" / "validation.jsonl"
    assert found[("Tiny-1/sw/base", "heldish", False)] is None  # the declaration says no for sw
    assert found[("Tiny-1/de/base", "heldish", True)] is None  # a held_out_file of its own
    # The evaluation stage reads the data stage that writes the file.
    stage = next(s for s in grid_stages(grid) if s.name == "eval/Tiny-1/de/base/heldish_de")
    assert stage.deps == ("data/de",)


def test_the_grid_names_no_task():
    """The grid's modules know tasks by their declarations, not by name (AlpacaEval's translated
    instructions and the baseline's answers aside, which are that task's own stages)."""
    import clo.experiments.config as config
    import clo.experiments.graph as graph

    assert not hasattr(config, "PAIRWISE_TASKS")
    src = Path(graph.__file__).read_text(encoding="utf-8")
    for name in ("preference", "fidelity", "text_davinci_003"):
        assert f'"{name}' not in src, name


# ---------------------------------------------------------------------------------------------
# Models by content


def _local_model(path: Path, weights: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2}), encoding="utf-8")
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_a_moved_model_reruns_nothing_and_swapped_weights_rerun_its_stages(tmp_path, monkeypatch):
    import os
    import shutil

    from clo.experiments.grid import run_grid
    from test_experiments import FakeStages

    monkeypatch.setenv("CLO_CACHE", str(tmp_path / "cache"))  # the file digests' cache
    model = _local_model(tmp_path / "a" / "Tiny-1", bytes(range(256)) * 8)
    tree = _grid(tmp_path, models=[str(model)], sizes=[4, None])
    first = FakeStages()
    assert run_grid(grid_from_dict(tree), first.functions(), progress=False).ok
    assert first.calls["train"] == 4 and first.calls["eval"] == 5  # base, sft and clo at 2 sizes

    moved = tmp_path / "b" / "Tiny-1"
    moved.parent.mkdir()
    shutil.move(str(model), str(moved))
    again = FakeStages()
    assert run_grid(grid_from_dict({**tree, "models": [str(moved)]}), again.functions(), progress=False).ok
    assert again.calls["train"] == 0 and again.calls["eval"] == 0 and again.calls["data"] == 0

    # Other weights of the same size, the modification time put back: another model.
    weights = moved / "model.safetensors"
    st = weights.stat()
    weights.write_bytes(bytes(reversed(range(256))) * 8)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    swapped = FakeStages()
    assert run_grid(grid_from_dict({**tree, "models": [str(moved)]}), swapped.functions(), progress=False).ok
    # Every training starts from the base model, every evaluation reads one of them; the data does not.
    assert swapped.calls["train"] == 4 and swapped.calls["eval"] == 5 and swapped.calls["data"] == 0


def test_models_enter_fingerprints_by_identity_not_path(tmp_path, monkeypatch):
    from clo.experiments.graph import model_inputs
    from clo.identity import directory_identity
    from clo.models import OFFLINE_MODELS

    monkeypatch.setenv("CLO_CACHE", str(tmp_path / "cache"))
    model = _local_model(tmp_path / "m", b"\x01" * 64)
    assert model_inputs(str(model)) == {"model": directory_identity(model)}
    assert str(tmp_path) not in json.dumps(model_inputs(str(model)))
    name = next(iter(OFFLINE_MODELS))  # named by its pinned package: nothing converted to plan a grid
    assert model_inputs(name) == {"model": {"offline": name, "package": OFFLINE_MODELS[name].pip}}
    assert not (tmp_path / "cache" / "models").exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_inputs("org/Tiny-1") == {"model": {"hub": "org/Tiny-1", "revision": None}}


def test_a_grid_directory_that_named_models_by_spec_is_refused(tmp_path):
    """Markers of format 2 fingerprinted a model by its spec: compared with identities, every stage
    would look changed and rerun from a clean output; the grid is refused instead, nothing cleared."""
    from clo.experiments.grid import run_grid
    from clo.experiments.stages import MarkerFormatError, read_marker
    from test_experiments import FakeStages

    grid = grid_from_dict(_grid(tmp_path))
    assert run_grid(grid, FakeStages().functions(), progress=False).ok
    marker = tmp_path / "grid" / "runs" / "Tiny-1" / "de" / "base" / "eval" / "belebele_de.done.json"
    doc = read_marker(marker)
    assert isinstance(doc["inputs"]["model"], str)  # the untrained model's fingerprint
    written = {**doc, "format": 2, "inputs": {**doc["inputs"], "model": "org/Tiny-1"}}
    marker.write_text(json.dumps(written), encoding="utf-8")
    fake = FakeStages()
    with pytest.raises(MarkerFormatError, match=rf"^{marker}: a stage marker of fingerprint format 2 "):
        run_grid(grid, fake.functions(), progress=False)
    assert sum(fake.calls.values()) == 0
    assert read_marker(marker) == written


# ---------------------------------------------------------------------------------------------
# clo run and failed judgments


def test_clo_run_with_failed_judgments_exits_3_unless_allowed(tmp_path, capsys, monkeypatch):
    import yaml

    import clo.experiments.launchers as launchers
    from clo.cli import main
    from test_experiments import FakeStages

    class Judged(FakeStages):
        def evaluate(self, task, model, cfg, out_dir, opts):
            metrics = super().evaluate(task, model, cfg, out_dir, opts)
            if task == "alpacaeval":  # one of four verdicts failed: a win rate over 3 items
                return {"win_rate": 2 / 3, "stderr": 0.27, "n": 3, "failures": 1}
            return metrics

    real = launchers.run_grid
    monkeypatch.setattr(launchers, "run_grid", lambda grid, stages, **kw: real(grid, Judged().functions(), **kw))
    tree = _grid(tmp_path, eval_jobs=[{"task": "belebele"}, {"task": "alpacaeval", "opts": {"limit": 4}}])
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(tree), encoding="utf-8")
    argv = ["run", str(tmp_path / "g.yaml"), "--skip-checks", "--no-progress"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    marker = tmp_path / "grid" / "runs" / "Tiny-1" / "de" / "clo" / "n4" / "eval" / "alpacaeval_de.done.json"
    assert (f"INCOMPLETE eval/Tiny-1/de/clo/n4/alpacaeval_de: 1 judgment(s) failed (the records' 'error' says "
            f"why): the win rate is over 3 items only; rerun to judge them again, or pass --allow-failed-judgments "
            f"to accept it (in a grid: remove {marker} to run it again)") in err
    assert err.count("INCOMPLETE") == 1  # belebele is complete; sft is the baseline, not compared
    # Resumed, nothing runs and the result is still incomplete; allowed, the grid succeeds.
    assert main(argv) == 3
    capsys.readouterr()
    assert main([*argv, "--allow-failed-judgments"]) == 0
    assert "INCOMPLETE" not in capsys.readouterr().err


def test_every_win_rate_cell_of_table9_shows_its_items(tmp_path):
    """Judged under the second prompt, two verdicts failed: that win rate rests on 803 items, and
    the cell says so (as the first prompt's cell says 805)."""
    from clo.experiments.graph import plan
    from clo.io import write_json
    from clo.report import write_report

    grid = grid_from_dict({"name": "g", "output_dir": str(tmp_path), "models": ["M"], "langs": ["de"],
                           "methods": ["sft", "clo"], "sizes": [None], "include_base": False,
                           "eval_jobs": [{"task": "alpacaeval", "opts": {"also_judge_with": "clo"}}]})
    write_json(tmp_path / "plan.json", plan(grid))
    write_json(tmp_path / "runs" / "M/de/clo/nall" / "eval" / "alpacaeval_de.done.json", {
        "fingerprint": "0" * 16, "result": {"win_rate": 0.62, "stderr": 0.02, "n": 805,
                                            "judge_prompt": "alpaca_eval@0123abcd", "also_judged": {
                                                "clo": {"win_rate": 0.71, "stderr": 0.015, "n": 803, "failures": 2}}}})
    write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    block = md.split("### Table 9", 1)[1].split("\n### ", 1)[0]
    row = next(line for line in block.splitlines() if line.startswith("| M |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == "62.0 ± 2.0 (n=805)" and cells[7] == "71.0 ± 1.5 (n=803)"
