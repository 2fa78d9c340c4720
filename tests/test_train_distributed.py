"""Two CPU processes (gloo, via torchrun + accelerate) train exactly like one with the same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clo.train.data import SEQUENCES  # noqa: F401  (the package must import before torchrun starts)


def _records(n, seed):
    import random

    rng = random.Random(seed)
    en, de = ["the", "cat", "dog", "red", "runs", "what"], ["der", "Katze", "Hund", "rot", "läuft", "was"]
    s = lambda ws, k: " ".join(rng.choice(ws) for _ in range(k))
    return [{"id": f"r{seed}-{i}", "tgt_lang": "de", "x_en": s(en, 4), "y_en": s(en, 5), "x_tgt": s(de, 4),
             "y_tgt": s(de, 6)} for i in range(n)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _log(run):
    rows = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if "train/loss" in r]


def _params(path):
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(path).named_parameters())

SCRIPT = """
import sys
from pathlib import Path
from clo.config import config_from_dict
from clo.train.trainer import train
d, out, micro = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
cfg = config_from_dict({"model": str(d / "model"), "lang": "de", "train": dict(
    lr=1e-2, min_lr=1e-3, batch_size=8, micro_batch_size=micro, eval_every=1, max_length=64,
    reference_cache=str(d / "refcache"), epochs=1)})
train(cfg, d / "train.jsonl", d / "val.jsonl", out)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from clo.testing import tiny_model, tiny_tokenizer

    d = tmp_path_factory.mktemp("dist")
    tiny_model("llama", vocab_size=512).save_pretrained(d / "model")
    tiny_tokenizer().save_pretrained(d / "model")
    _write(d / "train.jsonl", _records(16, 0))
    _write(d / "val.jsonl", _records(8, 1))
    (d / "run.py").write_text(SCRIPT)
    return d


def _run(data, out, nproc, micro):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.fail("torchrun not found next to the Python interpreter")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [torchrun, "--standalone", "--nproc_per_node", str(nproc), str(data / "run.py"),
           str(data), str(out), str(micro)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "result.json").read_text())["metrics"]


def test_two_gloo_processes_equal_one(data, tmp_path):
    from clo.config import config_from_dict
    from clo.train.trainer import train

    cfg = config_from_dict({"model": str(data / "model"), "lang": "de", "train": {
        "lr": 1e-2, "min_lr": 1e-3, "batch_size": 8, "micro_batch_size": 2, "eval_every": 1, "max_length": 64,
        "reference_cache": str(data / "refcache"), "epochs": 1}})
    # In this process: 4 micro-batches of 2 (the SCRIPT's config exactly).
    one = train(cfg, data / "train.jsonl", data / "val.jsonl", tmp_path / "one").metrics
    two = _run(data, tmp_path / "two", 2, 2)  # 2 processes x 2 micro-batches of 2
    assert one["processes"] == 1 and two["processes"] == 2
    la, lb = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert len(la) == len(lb) == 2
    for a, b in zip(la, lb):
        for k in ("train/loss", "train/nll", "train/cl", "train/acc_en", "train/grad_norm"):
            assert b[k] == pytest.approx(a[k], abs=1e-5), k
    assert two["best_val_loss"] == pytest.approx(one["best_val_loss"], abs=1e-5)
    pa, pb = _params(tmp_path / "one" / "best"), _params(tmp_path / "two" / "best")
    for n in pa:
        torch.testing.assert_close(pa[n], pb[n], atol=1e-5, rtol=0)
