"""Launchers: each stage a Slurm job through submitit, with the dependencies
data -> train -> eval / pairwise -> report and the same done-markers as the in-process run.

No Slurm here: sbatch is mocked with submitit's own test double (the scripts it would submit are
read back), and the real tiny grid runs through submitit's local executor (each job a process of
its own, training through ``accelerate launch``), which must give the in-process run's report.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import submitit  # noqa: F401  (dev extra: missing is a failure here, not a skip)

from clo.experiments.config import grid_from_dict, load_grid
from clo.experiments.graph import grid_stages
from clo.experiments.grid import StageFunctions, prebuilt_dataset, run_grid
from clo.experiments.launchers import (
    LAUNCHERS,
    SlurmLauncher,
    accelerate_command,
    follow_stage,
    job_graph,
    job_parameters,
)
from clo.experiments.stages import StageNotDone, marker_path, read_marker

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "experiments"


def _tree(tmp_path: Path, **kw) -> dict:
    tree = {
        "name": "t", "output_dir": str(tmp_path / "grid"),
        "base": {"data": {"val_fraction": 0.25, "subsets": [4, 8]}},
        "models": ["org/Tiny-1"], "langs": ["de"], "methods": ["sft", "clo"], "sizes": [None],
        "dataset": {"de": str(FIXTURES / "de_records.jsonl")},
        "eval_jobs": [{"task": "belebele"}, {"task": "alpacaeval"}, {"task": "alpacaeval", "lang": "en"}],
        "launcher": {"kind": "slurm", "partition": "gpu", "account": "lab", "setup": ["source .venv/bin/activate"],
                     "stages": {"train": {"gpus_per_node": 4, "nodes": 2, "timeout_min": 600}}},
    }
    tree.update(kw)
    return tree


class Fake:
    """Stage functions without models (what the grid engine sees of the real ones)."""

    def __init__(self, fail_train_of: str | None = None):
        self.calls: Counter = Counter()
        self.fail_train_of = fail_train_of

    def functions(self) -> StageFunctions:
        return StageFunctions(prebuilt=self.prebuilt, train=self.train, evaluate=self.evaluate,
                              samples=lambda m, c, p: list(p), translate_instructions=self.translate,
                              report=self.report)

    def prebuilt(self, path, cfg, out_dir):
        self.calls["data"] += 1
        return prebuilt_dataset(path, cfg, out_dir)

    def train(self, cfg, tp, vp, out_dir):
        self.calls[f"train:{cfg.train.method}"] += 1
        if self.fail_train_of == cfg.train.method:
            raise RuntimeError("injected training failure")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return {"checkpoint": str(Path(out_dir) / "best"), "metrics": {}}

    def evaluate(self, task, model, cfg, out_dir, opts):
        self.calls[f"eval:{task}"] += 1
        if task == "alpacaeval-outputs":
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / f"alpacaeval-outputs-{opts['lang']}.model_outputs.json").write_text("[]")
        return {"accuracy": 0.5, "n": 4}

    def translate(self, cfg, lang, out_path, instructions_file=None):
        self.calls[f"translate:{lang}"] += 1
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text("[]", encoding="utf-8")
        return {"n": 0}

    def report(self, grid_dir):
        self.calls["report"] += 1
        return {"dir": str(grid_dir / "report")}


def test_registry_has_both_launchers():
    assert {"local", "slurm"} <= set(LAUNCHERS)


def test_job_graph_dependencies(tmp_path):
    grid = grid_from_dict(_tree(tmp_path, langs=["de", "sw"], dataset={"de": "a.jsonl", "sw": "b.jsonl"},
                                eval_jobs=[{"task": "belebele"}, {"task": "fidelity"}, {"task": "alpacaeval"}]))
    jobs = {j.name: j for j in job_graph(grid)}
    assert [j.phase for j in job_graph(grid)][-1] == "report"
    assert jobs["data/sw"].deps == () and jobs["instructions/instructions_sw"].deps == ()
    assert jobs["train/Tiny-1/sw/clo/nall"].deps == ("data/sw",)
    assert jobs["eval/Tiny-1/sw/clo/nall"].deps == ("train/Tiny-1/sw/clo/nall",)
    assert jobs["eval/Tiny-1/sw/clo/nall"].stages == ("eval/Tiny-1/sw/clo/nall/belebele_sw",
                                                      "eval/Tiny-1/sw/clo/nall/fidelity_sw")
    # The untrained model reads the data only for the held-out fidelity prompts (no LCB in sw)...
    assert jobs["eval/Tiny-1/sw/base"].deps == ("data/sw",)
    # ... and in German the benchmark has prompts, but eval.data_dir is unset here: held-out too.
    assert jobs["eval/Tiny-1/de/base"].deps == ("data/de",)
    # One pairwise job per cell: the baseline's answers once, then the judged comparison.
    pw = jobs["pairwise/Tiny-1/sw/nall"]
    assert pw.stages == ("baseline-outputs/Tiny-1/sw/sft/nall/alpacaeval_sw", "eval/Tiny-1/sw/clo/nall/alpacaeval_sw")
    assert set(pw.deps) == {"train/Tiny-1/sw/clo/nall", "train/Tiny-1/sw/sft/nall", "instructions/instructions_sw"}
    assert set(jobs["report"].deps) == set(jobs) - {"report"}
    # Every stage of the grid is in exactly one job.
    names = [s for j in jobs.values() for s in j.stages]
    assert sorted(names) == sorted(r.name for r in grid_stages(grid)) and len(names) == len(set(names))


def test_the_stage_list_names_what_run_grid_runs(tmp_path):
    grid = grid_from_dict(_tree(tmp_path, sizes=[4, None], samples=["Hallo?"]))
    res = run_grid(grid, Fake().functions(), progress=False)
    assert res.ok, res.failures
    assert res.ran == [r.name for r in grid_stages(grid)]


def test_only_runs_the_selected_stages_and_looks_up_the_rest(tmp_path):
    grid = grid_from_dict(_tree(tmp_path))
    fake = Fake()
    res = run_grid(grid, fake.functions(), progress=False, only={"data/de"}.__contains__)
    assert res.ran == ["data/de"] and not res.failures
    assert "Tiny-1/de/sft/nall" in res.pending  # its training is another job's, not done yet
    assert not (tmp_path / "grid" / "runs" / "Tiny-1" / "de" / "sft" / "nall" / "failed.json").exists()
    res = run_grid(grid, fake.functions(), progress=False, only={"train/Tiny-1/de/sft/nall"}.__contains__)
    assert res.ran == ["train/Tiny-1/de/sft/nall"] and res.looked_up[0] == "data/de"
    assert fake.calls == Counter({"data": 1, "train:sft": 1})


def _sbatch_scripts(folder: Path) -> dict[str, str]:
    scripts = {}
    for f in folder.rglob("*_submission.sh"):
        text = f.read_text()
        name = next(ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("#SBATCH --job-name="))
        scripts[name] = text
    return scripts


def test_slurm_submission_with_dependencies_and_resources(tmp_path):
    from submitit.core.test_core import MockedSubprocess
    from submitit.slurm import slurm

    grid = grid_from_dict(_tree(tmp_path))
    mock = MockedSubprocess(known_cmds=["srun"])
    try:
        with mock.context():
            out = SlurmLauncher().launch(grid, progress=False)
    finally:
        slurm.SlurmJob.watcher.clear()
    assert out.ok
    ids = {name: j.job_id for name, j in out.jobs.items()}
    assert list(ids) == ["data/de", "instructions/instructions_de", "train/Tiny-1/de/sft/nall",
                         "train/Tiny-1/de/clo/nall", "eval/Tiny-1/de/base", "eval/Tiny-1/de/sft/nall",
                         "eval/Tiny-1/de/clo/nall", "pairwise/Tiny-1/de/nall", "report"]
    s = _sbatch_scripts(tmp_path / "grid" / "slurm")
    train = s["clo-t-train-Tiny-1-de-clo-nall"]
    for flag in ("--partition=gpu", "--account=lab", "--nodes=2", "--gpus-per-node=4", "--ntasks-per-node=1",
                 "--time=600", f"--dependency=afterok:{ids['data/de']}", "--kill-on-invalid-dep=yes"):
        assert f"#SBATCH {flag}" in train, flag
    assert "source .venv/bin/activate" in train
    pw = s["clo-t-pairwise-Tiny-1-de-nall"]
    dep = next(ln for ln in pw.splitlines() if "--dependency=" in ln).split("afterok:")[1].split(":")
    assert set(dep) == {ids["train/Tiny-1/de/clo/nall"], ids["train/Tiny-1/de/sft/nall"],
                        ids["instructions/instructions_de"]}
    # The report waits for every job, however it ended, and reports the failures as gaps.
    rep = next(ln for ln in s["clo-t-report"].splitlines() if "--dependency=" in ln)
    assert rep.startswith("#SBATCH --dependency=afterany:") and len(rep.split(":")) == 1 + len(ids) - 1
    assert "--gpus-per-node" not in s["clo-t-report"] or "#SBATCH --gpus-per-node=0" in s["clo-t-report"]
    assert (tmp_path / "grid" / "grid.yaml").is_file() and (tmp_path / "grid" / "plan.json").is_file()


def test_job_parameters_take_the_stage_resources(tmp_path):
    grid = grid_from_dict(_tree(tmp_path, launcher={"kind": "slurm", "qos": "high", "additional_parameters": {
        "mail-type": "FAIL"}, "stages": {"eval": {"mem_gb": 64, "partition": "a100", "additional_parameters": {
            "constraint": "80gb"}}}}))
    ev = next(j for j in job_graph(grid) if j.name == "eval/Tiny-1/de/clo/nall")
    p = job_parameters(grid, ev, ["7"])
    assert p["slurm_partition"] == "a100" and p["slurm_qos"] == "high" and p["mem_gb"] == 64
    assert p["gpus_per_node"] == 1 and p["nodes"] == 1
    assert p["slurm_additional_parameters"] == {"mail-type": "FAIL", "constraint": "80gb", "dependency": "afterok:7",
                                                "kill_on_invalid_dep": "yes"}


def test_launcher_config_is_validated(tmp_path):
    from clo.config_base import ConfigError

    with pytest.raises(ConfigError, match="launcher.kind: Value error, unknown launcher 'pbs'"):
        grid_from_dict(_tree(tmp_path, launcher={"kind": "pbs"}), "g.yaml")
    with pytest.raises(ConfigError, match="eval.nodes: only train jobs span several nodes"):
        grid_from_dict(_tree(tmp_path, launcher={"stages": {"eval": {"nodes": 2}}}), "g.yaml")
    with pytest.raises(ConfigError, match="launcher.stages.train.gpu_per_node: unknown key"):
        grid_from_dict(_tree(tmp_path, launcher={"stages": {"train": {"gpu_per_node": 2}}}), "g.yaml")


def test_accelerate_command_multi_gpu_and_multi_node(tmp_path):
    grid = grid_from_dict(_tree(tmp_path, launcher={"kind": "slurm", "accelerate_config": "configs/accelerate/fsdp.yaml",
                                                    "main_process_port": 29555,
                                                    "stages": {"train": {"gpus_per_node": 8, "nodes": 2}}}))
    cmd = accelerate_command(grid.launcher, Path("c.yaml"), Path("t.jsonl"), None, Path("out"), node_rank=1,
                             main_host="node17")
    s = " ".join(cmd)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert ("--config_file configs/accelerate/fsdp.yaml --num_processes 16 --num_machines 2 --mixed_precision no "
            "--dynamo_backend no --machine_rank 1 --main_process_ip node17 --main_process_port 29555 "
            "-m clo.cli train --config c.yaml --data t.jsonl --output out") in s
    one = grid_from_dict(_tree(tmp_path, launcher={"stages": {"train": {"gpus_per_node": 4}}}))
    s1 = " ".join(accelerate_command(one.launcher, Path("c.yaml"), Path("t.jsonl"), None, Path("o")))
    assert "--multi_gpu --num_processes 4 --num_machines 1" in s1 and "--machine_rank" not in s1
    cpu = grid_from_dict(_tree(tmp_path, launcher={"stages": {"train": {"gpus_per_node": 0}}}))
    assert "--cpu --num_processes 1" in " ".join(accelerate_command(cpu.launcher, Path("c"), Path("t"), None, Path("o")))
    with pytest.raises(RuntimeError, match="first host is unknown"):
        accelerate_command(grid.launcher, Path("c"), Path("t"), None, Path("o"), node_rank=0)


def test_worker_nodes_follow_and_write_no_marker(tmp_path):
    marker = marker_path(tmp_path, "train")
    ran = []
    with pytest.raises(StageNotDone):
        follow_stage("train/x", marker, {"a": 1}, lambda: ran.append(1))
    assert ran == [1] and not marker.exists() and not list(tmp_path.iterdir())
    from clo.experiments.stages import run_stage

    run_stage("train/x", marker, {"a": 1}, lambda: {"ok": True})
    with pytest.raises(StageNotDone):
        follow_stage("train/x", marker, {"a": 1}, lambda: ran.append(2))
    assert ran == [1]  # done: the worker does not train again


def test_debug_executor_failed_training_skips_its_dependents_and_the_report_runs(tmp_path):
    grid = grid_from_dict(_tree(tmp_path, launcher={"kind": "slurm", "executor": "debug"}))
    fake = Fake(fail_train_of="clo")
    out = SlurmLauncher().launch(grid, stages=fake.functions(), progress=False)
    assert not out.ok
    assert "injected training failure" in out.failures["train/Tiny-1/de/clo/nall"]
    assert out.failures["eval/Tiny-1/de/clo/nall"] == "not run: train/Tiny-1/de/clo/nall failed"
    assert "pairwise/Tiny-1/de/nall" in out.failures and "report" not in out.failures
    assert fake.calls["report"] == 1 and fake.calls["eval:belebele"] == 2  # base and sft
    status = json.loads((tmp_path / "grid" / "status.json").read_text())
    assert not status["ok"] and "Tiny-1/de/clo/nall" in status["failures"]
    # Resubmitted: only what did not finish (with the training fixed).
    again = Fake()
    out2 = SlurmLauncher().launch(grid, stages=again.functions(), progress=False)
    assert out2.ok, out2.failures
    assert list(out2.jobs) == ["train/Tiny-1/de/clo/nall", "eval/Tiny-1/de/clo/nall", "pairwise/Tiny-1/de/nall",
                               "report"]
    assert again.calls["train:clo"] == 1 and again.calls["train:sft"] == 0 and again.calls["data"] == 0
    # In-process, the same grid directory is done.
    res = run_grid(grid, Fake().functions(), progress=False)
    assert res.ran == [] and res.ok


# ---------------------------------------------------------------------------------------------
# The real tiny grid through submitit's local executor


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from clo.testing import tiny_model, tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny-llama")
    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=512)
    model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id = (
        tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _csvs(d: Path) -> dict[str, list]:
    return {f.name: list(csv.reader(f.open(encoding="utf-8"))) for f in sorted(d.glob("*.csv"))}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_tiny_grid_on_the_local_executor_gives_the_in_process_report(tmp_path, tiny_model_dir, shared_data):
    common = [f"models=[{{name: tiny-llama, spec: {tiny_model_dir}}}]", f"base.eval.data_dir={shared_data}",
              # Drift figures are the report's own concern (tests/test_report.py); not what is compared here.
              "base.train.drift_prompts=0"]
    here = load_grid(REPO / "configs" / "tiny.yaml", [*common, f"output_dir={tmp_path / 'here'}"])
    res = run_grid(here, progress=False)
    assert res.ok, res.failures

    slurm_overrides = [*common, f"output_dir={tmp_path / 'cluster'}", "launcher.kind=slurm",
                       "launcher.executor=local", *(f"launcher.stages.{s}.gpus_per_node=0" for s in (
                           "data", "train", "eval", "pairwise"))]
    grid = load_grid(REPO / "configs" / "tiny.yaml", slurm_overrides)
    out = SlurmLauncher().launch(grid, progress=False)
    assert out.ok, out.failures
    assert list(out.jobs) == ["data/de", "train/tiny-llama/de/sft/nall", "train/tiny-llama/de/clo/nall",
                              "eval/tiny-llama/de/base", "eval/tiny-llama/de/sft/nall", "eval/tiny-llama/de/clo/nall",
                              "report"]
    a, b = tmp_path / "here", tmp_path / "cluster"
    # Trained through `accelerate launch` in its own job, the same weights as in-process.
    for run in ("sft", "clo"):
        rel = f"runs/tiny-llama/de/{run}/nall/train/best/model.safetensors"
        assert _sha(a / rel) == _sha(b / rel), run
    assert _csvs(a / "report") == _csvs(b / "report")
    ta, tb = (json.loads((d / "report" / "report.json").read_text()) for d in (a, b))
    assert ta["tables"] and ta == tb
    md_a, md_b = ((d / "report" / "report.md").read_text().replace(str(d), "GRID") for d in (a, b))
    assert md_a == md_b
    # The same done-markers: a resubmission submits nothing, an in-process run skips every stage.
    again = SlurmLauncher().launch(load_grid(REPO / "configs" / "tiny.yaml", slurm_overrides), progress=False)
    assert again.ok and not again.jobs and "nothing submitted" in again.lines[0]
    res2 = run_grid(grid, progress=False)
    assert res2.ran == [] and res2.ok
    assert read_marker(b / "report" / "report.done.json")["fingerprint"] == read_marker(
        a / "report" / "report.done.json")["fingerprint"]
