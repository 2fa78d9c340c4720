"""Two CPU processes (gloo, via torchrun + accelerate) train exactly like one with the same global batch.

One torchrun launch runs every two-process job of this module (a launch costs seconds); each test
then compares a job with the same configuration trained in this process.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clo.train.data import SEQUENCES  # noqa: F401  (the package must import before torchrun starts)

# Every test reads the runs of one module fixture that trains dozens of runs under torchrun.
pytestmark = pytest.mark.slow

# Batches of 2, 4 and 8 over sets of 1, 3, 5 and 9 examples: the last batch often has fewer units
# than processes, and a set of 1 leaves one process without any unit in every step.
SIZES = (1, 3, 5, 9)
BATCHES = (2, 4, 8)


def _records(n, seed):
    import random

    rng = random.Random(seed)
    en, de = ["the", "cat", "dog", "red", "runs", "what"], ["der", "Katze", "Hund", "rot", "läuft", "was"]
    s = lambda ws, k: " ".join(rng.choice(ws) for _ in range(rng.randint(k - 2, k + 2)))
    return [{"id": f"r{seed}-{i}", "tgt_lang": "de", "x_en": s(en, 4), "y_en": s(en, 5), "x_tgt": s(de, 4),
             "y_tgt": s(de, 6)} for i in range(n)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _log(run):
    rows = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if "train/loss" in r], [r for r in rows if "val/loss" in r]


def _params(path):
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(path).named_parameters())


def _train_cfg(d, job):
    # One unit per micro-batch in both runs: the same forwards, so only the order in which
    # gradients are summed differs. AdamW's first steps are about lr * sign(g), so a gradient
    # entry near 0 turns that rounding into up to lr; lr 1e-3 keeps it under the 1e-6 asserted
    # while every weight still moves by about 1e-3 a step. grad_norm (compared too) catches
    # a wrongly scaled gradient, to which AdamW is blind.
    base = {"lr": 1e-3, "min_lr": 1e-4, "eval_every": 2, "max_length": 64, "epochs": 1, "micro_batch_size": 1,
            "reference_cache": str(d / f"refcache-{job['name']}-{job['procs']}")}
    return {**base, **job["train"]}


SCRIPT = """
import json, sys
from pathlib import Path
import accelerate
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from clo.config import config_from_dict
from clo.train.trainer import train

PLAIN = accelerate.Accelerator


class FsdpYamlAccelerator(PLAIN):
    # What `accelerate launch --config_file configs/accelerate/fsdp.yaml` sets up on GPUs; on CPU
    # processes accelerate falls back to DDP, so its state is set here as a GPU launch sets it.
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        fsdp = load_config_from_file(sys.argv[3]).fsdp_config
        kw = {k if k == "fsdp_version" else k.removeprefix("fsdp_"): v for k, v in fsdp.items()}
        self.state.fsdp_plugin = FullyShardedDataParallelPlugin(**kw)
        self.state.distributed_type = DistributedType.FSDP


d, out, resume = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[4] == "resume"
for job in json.loads((d / "jobs.json").read_text()):
    procs = job["procs"] if resume else job.get("first_procs", job["procs"])
    if procs != int(__import__("os").environ["WORLD_SIZE"]) or (resume and "stop_after" not in job):
        continue
    accelerate.Accelerator = FsdpYamlAccelerator if job.get("fsdp_yaml") else PLAIN
    cfg = config_from_dict({"model": str(d / "model"), "lang": "de", "train": job["cfg"]})
    # A job with stop_after is interrupted there in the first launch and resumed by a fresh one.
    stop = None if resume else job.get("stop_after")
    train(cfg, d / job["train_file"], d / job["val_file"] if job["val_file"] else None, out / job["name"],
          stop_after_steps=stop)
"""
FSDP_YAML = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "fsdp.yaml"
# configs/accelerate/fsdp.yaml under one process and under two: the same run as one plain process.
# A small max_grad_norm makes clipping scale every step, so a clip that saw no gradients shows.
FSDP_YAML_JOBS = [{"name": f"fsdp-yaml-{procs}", "procs": procs, "fsdp_yaml": True,
                   "train": {"batch_size": 4, "max_grad_norm": 0.05}, "train_file": "train9.jsonl",
                   "val_file": "val3.jsonl"} for procs in (1, 2)]


# FSDP2 runs interrupted (after the step-2 validation kept a best: its shards are saved too; and
# after step 1, before any best) and resumed by a new launch: the same run as the uninterrupted one.
RESUME_JOBS = {"fsdp2-attention": 2, "fsdp2-full-sft": 1}


def _jobs():
    jobs = []
    for n in SIZES:
        for b in BATCHES:
            jobs.append({"name": f"ddp-n{n}-b{b}", "train": {"batch_size": b, "max_grad_norm": 1.0},
                         "train_file": f"train{n}.jsonl", "val_file": "val3.jsonl"})
    # Micro-batches cut by a token budget (about one quadruple each) on top of the process split.
    jobs.append({"name": "ddp-tokens", "train": {"batch_size": 8, "micro_batch_size": None,
                                                 "max_tokens_per_micro_batch": 60},
                 "train_file": "train9.jsonl", "val_file": "val3.jsonl"})
    jobs.append({"name": "fsdp2-attention", "train": {"batch_size": 4, "sharding": "fsdp2"},
                 "train_file": "train9.jsonl", "val_file": "val3.jsonl"})
    jobs.append({"name": "fsdp2-full-sft", "train": {"batch_size": 4, "sharding": "fsdp2", "trainable": "full",
                                                     "method": "sft", "max_grad_norm": 0.5},
                 "train_file": "train5.jsonl", "val_file": "val3.jsonl"})
    for name, stop in RESUME_JOBS.items():
        job = next(j for j in jobs if j["name"] == name)
        jobs.append({**job, "name": f"{name}-resumed", "stop_after": stop})
    # Begun by one process (one-file state: nothing to shard), resumed by two under FSDP2.
    jobs.append({**next(j for j in jobs if j["name"] == "fsdp2-attention"), "name": "fsdp2-attention-from-one",
                 "stop_after": 2, "first_procs": 1})
    return jobs


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Every job trained by 2 gloo processes: (data dir, output dir)."""
    from clo.testing import tiny_model, tiny_tokenizer

    d = tmp_path_factory.mktemp("dist")
    tiny_model("llama", vocab_size=512).save_pretrained(d / "model")
    tiny_tokenizer().save_pretrained(d / "model")
    for n in SIZES:
        _write(d / f"train{n}.jsonl", _records(n, n))
    _write(d / "val3.jsonl", _records(3, 100))
    jobs = [{**j, "procs": 2} for j in _jobs()] + FSDP_YAML_JOBS
    for j in jobs:
        j["cfg"] = _train_cfg(d, j)
    (d / "jobs.json").write_text(json.dumps(jobs))
    (d / "run.py").write_text(SCRIPT)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.fail("torchrun not found next to the Python interpreter")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = d / "two"
    for procs, phase in ((2, "first"), (1, "first"), (2, "resume")):
        if phase == "resume":  # the interrupted runs as they were left, before the resume finishes them
            for name in RESUME_JOBS:
                shutil.copytree(out / f"{name}-resumed", d / "interrupted" / name)
            shutil.copytree(out / "fsdp2-attention-from-one", d / "interrupted" / "from-one")
        cmd = [torchrun, "--standalone", "--nproc_per_node", str(procs), str(d / "run.py"), str(d), str(out),
               str(FSDP_YAML), phase]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return d, out


def _one(d, tmp_path, name):
    from clo.config import config_from_dict
    from clo.train.trainer import train

    job = {**next(j for j in _jobs() + FSDP_YAML_JOBS if j["name"] == name), "procs": 1}
    job["train"] = {k: v for k, v in job["train"].items() if k != "sharding"}  # one process: nothing to shard
    cfg = config_from_dict({"model": str(d / "model"), "lang": "de", "train": _train_cfg(d, job)})
    val = d / job["val_file"] if job["val_file"] else None
    return train(cfg, d / job["train_file"], val, tmp_path / name).metrics


def _assert_same_run(a_dir, b_dir, keys=("train/loss", "train/nll", "train/cl", "train/grad_norm"), tol=1e-6):
    (ta, va), (tb, vb) = _log(a_dir), _log(b_dir)
    assert len(ta) == len(tb) > 0 and len(va) == len(vb) > 0
    for a, b in zip(ta, tb):
        for k in keys:
            if k in a:
                assert b[k] == pytest.approx(a[k], abs=tol, rel=0), (k, a["step"])
    for a, b in zip(va, vb):
        assert b["val/loss"] == pytest.approx(a["val/loss"], abs=tol, rel=0)
    pa, pb = _params(a_dir / "best"), _params(b_dir / "best")
    assert pa.keys() == pb.keys()
    for n in pa:
        torch.testing.assert_close(pb[n], pa[n], atol=tol, rtol=0, msg=n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("b", BATCHES)
def test_two_processes_equal_one(two, tmp_path, n, b):
    d, out = two
    name = f"ddp-n{n}-b{b}"
    one = _one(d, tmp_path, name)
    res = json.loads((out / name / "result.json").read_text())["metrics"]
    assert one["processes"] == 1 and res["processes"] == 2
    assert res["steps"] == one["steps"] == -(-n // b)
    _assert_same_run(tmp_path / name, out / name)


def test_sharded_reference_cache_equals_one_process(two, tmp_path):
    d, _ = two
    _one(d, tmp_path, "ddp-n9-b8")
    a, b = d / "refcache-ddp-n9-b8-1", d / "refcache-ddp-n9-b8-2"
    files_a, files_b = sorted(p.name for p in a.iterdir()), sorted(p.name for p in b.iterdir())
    assert files_a == files_b and len(files_a) == 2  # train and val, same keys
    for f in files_a:
        ta, tb = torch.load(a / f), torch.load(b / f)
        assert ta.shape[1] == 4 and torch.isfinite(ta).all()
        torch.testing.assert_close(tb, ta, atol=1e-6, rtol=0)


def test_token_budget_micro_batches_equal_one_process_without(two, tmp_path):
    d, out = two
    _one(d, tmp_path, "ddp-n9-b8")
    _assert_same_run(tmp_path / "ddp-n9-b8", out / "ddp-tokens")


@pytest.mark.parametrize("name", ["fsdp2-attention", "fsdp2-full-sft"])
def test_fsdp2_two_processes_equal_one_and_best_loads(two, tmp_path, name):
    from transformers import AutoModelForCausalLM

    d, out = two
    one = _one(d, tmp_path, name)
    res = json.loads((out / name / "result.json").read_text())["metrics"]
    assert res["sharding"] == "fsdp2" and one["sharding"] == "none"
    _assert_same_run(tmp_path / name, out / name)
    # best/ is an ordinary transformers checkpoint: full tensors, loadable, and trained.
    model = AutoModelForCausalLM.from_pretrained(out / name / "best")
    base = dict(AutoModelForCausalLM.from_pretrained(d / "model").named_parameters())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, base[n])}
    trained = {n for n in base if ".self_attn." in n} if "attention" in name else set(base)
    assert changed == trained


@pytest.mark.parametrize("procs", [1, 2])
def test_fsdp_yaml_trains_like_one_plain_process(two, tmp_path, procs):
    """Under configs/accelerate/fsdp.yaml, whatever accelerate's prepare does to the model (one
    process: its FSDP2 plugin re-creates every parameter; two: clo shards), clipping, the optimiser
    and best/ use the parameters that train: the same losses, grad norms and weights."""
    d, out = two
    name = f"fsdp-yaml-{procs}"
    one = _one(d, tmp_path, name)
    res = json.loads((out / name / "result.json").read_text())["metrics"]
    assert res["processes"] == procs and one["processes"] == 1
    assert res["sharding"] == ("fsdp2" if procs == 2 else "none")
    train_log, _ = _log(out / name)
    # Clipping saw the gradients and scaled them (every norm is above max_grad_norm).
    assert all(r["train/grad_norm"] > 0.05 for r in train_log) and len(train_log) == 3
    _assert_same_run(tmp_path / name, out / name)


@pytest.mark.parametrize("name", list(RESUME_JOBS))
def test_fsdp2_interrupted_and_resumed_equals_uninterrupted(two, name):
    """Two processes stopped after RESUME_JOBS[name] steps, resumed by a new launch: the same losses,
    grad norms and best/ weights as the uninterrupted two-process run."""
    _, out = two
    res = json.loads((out / f"{name}-resumed" / "result.json").read_text())["metrics"]
    assert res["sharding"] == "fsdp2" and res["finished"]
    _assert_same_run(out / name, out / f"{name}-resumed")


def test_a_one_process_state_resumes_under_fsdp2(two):
    d, out = two
    last = d / "interrupted" / "from-one" / "last"  # one file, as one process writes it
    assert [p.name for p in last.iterdir()] == ["state.pt"]
    assert torch.load(last / "state.pt", weights_only=True)["trainable"]
    res = json.loads((out / "fsdp2-attention-from-one" / "result.json").read_text())["metrics"]
    assert res["sharding"] == "fsdp2" and res["processes"] == 2
    _assert_same_run(out / "fsdp2-attention", out / "fsdp2-attention-from-one")


def _trainable_numel(d, name):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(d / "model")
    return sum(p.numel() for n, p in model.named_parameters() if "attention" not in name or ".self_attn." in n)


@pytest.mark.parametrize("name", list(RESUME_JOBS))
def test_fsdp2_state_is_per_process_shards_and_a_small_state_file(two, name):
    d, _ = two
    last = d / "interrupted" / name / "last"
    shards = sorted(p for p in last.iterdir() if p.is_dir())
    assert [p.name for p in last.iterdir() if p.is_file()] == ["state.pt"] and len(shards) == 1
    files = sorted(p.name for p in shards[0].iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one file per process, written by it
    state = torch.load(last / "state.pt", weights_only=True)
    stop = RESUME_JOBS[name]
    assert state["step"] == stop and state["shards"] == shards[0].name
    assert "trainable" not in state and "optimizer" not in state
    assert state["has_best"] == (stop >= 2)  # validation at step 2 kept a best model
    tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
    assert [t.numel() for t in tensors] == [state["rng"].numel()]  # no weight or moment in state.pt
    # Every trainable tensor (and each AdamW moment, and the best weights) is stored as two halves,
    # one in each process's file: process 0 wrote rows 0.., process 1 the rest.
    from clo.train.distributed import _safe_reader

    meta = _safe_reader(shards[0]).read_metadata()
    by_fqn = {}
    for idx, info in meta.storage_data.items():
        by_fqn.setdefault(idx.fqn, set()).add(info.relative_path)
    groups = ("model", "optimizer", "best") if state["has_best"] else ("model", "optimizer")
    big = {k: m for k, m in meta.state_dict_metadata.items() if len(getattr(m, "size", ())) > 0}
    assert {k.split(".")[0] for k in big} == set(groups)
    numel = _trainable_numel(d, name)
    assert sum(m.size.numel() for k, m in big.items() if k.startswith("model.")) == numel
    for k, m in big.items():
        assert [c.offsets[0] for c in m.chunks] == [0, m.size[0] // 2], k
        assert by_fqn[k] == {"__0_0.distcp", "__1_0.distcp"}, k
    if state["has_best"]:  # kept at the step-2 validation, saved at step 2: the step-2 weights
        import torch.distributed.checkpoint as dcp

        full = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in big.items()
                if not k.startswith("optimizer.")}
        dcp.load(full, storage_reader=_safe_reader(shards[0]))
        for k in (k for k in full if k.startswith("best.")):
            assert torch.equal(full[k], full["model." + k.removeprefix("best.")]), k
    # ... so each file holds about half of the fp32 weights and moments (serialisation adds a little).
    sizes = [(shards[0] / f).stat().st_size for f in ("__0_0.distcp", "__1_0.distcp")]
    assert sum(sizes) >= numel * 4 * len(groups + ("moment",))
    assert all(0.35 < s / sum(sizes) < 0.65 for s in sizes), sizes


def test_fsdp2_state_resumes_in_one_process(two, tmp_path):
    """The two processes' shards re-assembled by one unsharded process: the same run as one
    process trained throughout."""
    d, _ = two
    _one(d, tmp_path / "uninterrupted", "fsdp2-attention")
    shutil.copytree(d / "interrupted" / "fsdp2-attention", tmp_path / "fsdp2-attention")
    res = _one(d, tmp_path, "fsdp2-attention")
    assert res["steps"] == 3 and res["sharding"] == "none"
    _assert_same_run(tmp_path / "uninterrupted" / "fsdp2-attention", tmp_path / "fsdp2-attention")


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a malicious .metadata would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _resume_refused(d, run, match):
    from clo.train.trainer import StateFileError

    with pytest.raises(StateFileError, match=match) as e:
        _one(d, run.parent, run.name)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_placed_metadata_pickle_is_refused_not_run(two, tmp_path):
    import pickle

    d, _ = two
    run = tmp_path / "fsdp2-attention"
    shutil.copytree(d / "interrupted" / "fsdp2-attention", run)
    meta = next(p for p in (run / "last").iterdir() if p.is_dir()) / ".metadata"
    marker = tmp_path / "ran"
    meta.write_bytes(pickle.dumps(_Payload(marker)))
    msg = _resume_refused(d, run, r"\.metadata: names (io|builtins)\.open, which a checkpoint's metadata never holds")
    assert not marker.exists() and str(run / "last") in msg


def test_a_state_naming_shards_elsewhere_is_refused(two, tmp_path):
    d, _ = two
    run = tmp_path / "fsdp2-attention"
    shutil.copytree(d / "interrupted" / "fsdp2-attention", run)
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    shutil.copytree(run / "last" / state["shards"], tmp_path / "shards-elsewhere")
    torch.save({**state, "shards": "../../shards-elsewhere"}, run / "last" / "state.pt")
    _resume_refused(d, run, r"state\.pt: field 'shards' '\.\./\.\./shards-elsewhere' is not a shard directory")


UNSHARED = """
import os, sys
from pathlib import Path
from clo.config import config_from_dict
from clo.train.trainer import train
d = Path(sys.argv[1])
cfg = config_from_dict({"model": str(d / "model"), "lang": "de",
                        "train": {"batch_size": 2, "max_length": 64, "reference_cache": str(d / "ref")}})
# Each process its own directory: what two nodes without a shared filesystem see.
out = d / ("node" + os.environ["RANK"] if sys.argv[2] == "unshared" else "shared")
# One file per process: torchrun interleaves the processes' stdout, two lines can run together.
result = d / ("result" + os.environ["RANK"])
try:
    train(cfg, d / "train.jsonl", None, out)
    result.write_text("TRAINED")
except Exception as e:
    result.write_text(f"REFUSED {type(e).__name__}: {e}")
# Leave together and without the interpreter's teardown, where gloo's threads now and then abort a
# process whose peer is still running ("terminate called without an active exception").
import torch.distributed as dist
dist.barrier()
os._exit(0)
"""


@pytest.mark.parametrize("layout", ["unshared", "shared"])
def test_an_output_dir_not_shared_by_every_process_is_refused(tmp_path, layout):
    from clo.testing import tiny_model, tiny_tokenizer

    tiny_model("llama", vocab_size=512).save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    _write(tmp_path / "train.jsonl", _records(2, 7))
    (tmp_path / "run.py").write_text(UNSHARED)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(tmp_path / "run.py"), str(tmp_path),
                           layout], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [(tmp_path / f"result{rank}").read_text() for rank in (0, 1)]
    if layout == "shared":
        assert lines == ["TRAINED", "TRAINED"]
        assert not list((tmp_path / "shared").glob(".clo-shared-check-*"))  # the probe is cleaned up
    else:
        # Both processes stop before training, naming the directory and the blind process.
        assert len(lines) == 2 and all(ln.startswith("REFUSED UnsharedDirectory") for ln in lines), proc.stdout
        assert all("is not shared by all processes: process 1 on" in ln for ln in lines)
        assert not (tmp_path / "node0" / "last").exists() and not (tmp_path / "node1" / "last").exists()
