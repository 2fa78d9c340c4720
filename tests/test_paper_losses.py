"""The training choices the paper leaves open: L_SFT's reduction (eq. 9) and what batch_size counts."""

import json
import math

import pytest
import torch

from clo.config import config_from_dict
from clo.formatting import encode_pair
from clo.train.losses import sft_nll
from clo.train.trainer import plan_batches, train

EN = ["the", "cat", "dog", "house", "red", "blue", "runs", "sleeps", "what", "is"]
DE = ["der", "die", "das", "Katze", "Hund", "Haus", "rot", "blau", "läuft", "Frage"]


def test_sft_nll_token_and_sequence_by_hand():
    sums = torch.tensor([-3.0, -5.0])  # two sequences: 2 and 4 response tokens
    counts = torch.tensor([2, 4])
    assert sft_nll(sums, counts)[0].item() == pytest.approx(8 / 6)
    assert sft_nll(sums, counts, "token")[0].item() == pytest.approx(8 / 6)
    # eq. 9: (1/N) sum_i -log pi(y_i|x_i), N = 2
    assert sft_nll(sums, counts, "sequence")[0].item() == pytest.approx(4.0)
    assert sft_nll(sums, 4, "sequence")[0].item() == pytest.approx(2.0)  # a global batch of 4 sequences
    with pytest.raises(ValueError, match="reduction must be 'token' or 'sequence'"):
        sft_nll(sums, counts, "mean")
    with pytest.raises(ValueError, match="no response sequences"):
        sft_nll(sums, 0, "sequence")


def _records(n, seed):
    import random

    rng = random.Random(seed)
    s = lambda ws, k: " ".join(rng.choice(ws) for _ in range(k))
    return [{"id": f"t{i}", "tgt_lang": "de", "x_en": s(EN, 4), "y_en": s(EN, 3 + i % 5), "x_tgt": s(DE, 4),
             "y_tgt": s(DE, 2 + (3 * i) % 7)} for i in range(n)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from clo.testing import tiny_model, tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny")
    tiny_model("llama", vocab_size=512).save_pretrained(d / "model")
    tiny_tokenizer().save_pretrained(d / "model")
    rows = _records(16, 0)
    (d / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return d, rows


def _cfg(d, **train):
    base = {"lr": 5e-3, "min_lr": 5e-3, "batch_size": 8, "eval_every": 1, "max_length": 64,
            "reference_cache": str(d / "refcache"), "max_grad_norm": None}
    base.update(train)
    return config_from_dict({"model": str(d / "model"), "lang": "de", "train": base})


def _first(run):
    rows = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    return next(r for r in rows if "train/nll" in r)


def test_sequence_reduction_is_eq9_in_the_trainer(workdir, tmp_path):
    """The first step's NLL (weights not yet updated): with ``sequence`` the batch's summed NLL over
    its number of sequences, with ``token`` over its number of response tokens, so the ratio of the
    two is the batch's tokens per sequence, counted here from the records."""
    from transformers import AutoTokenizer

    d, rows = workdir
    nll = {}
    for red in ("token", "sequence"):
        train(_cfg(d, method="sft", epochs=0.25, nll_reduction=red), d / "train.jsonl", None, tmp_path / red)
        nll[red] = _first(tmp_path / red)["train/nll"]
    tok = AutoTokenizer.from_pretrained(d / "model")
    # sft's units: example i's (x_en, y_en) row, then its (x_tgt, y_tgt) row
    units = [(r["x_en"], r["y_en"]) if j == 0 else (r["x_tgt"], r["y_tgt"]) for r in rows for j in range(2)]
    step = plan_batches(len(units), 8, 0.25, 0)[0]
    tokens = sum(len(encode_pair(tok, *units[u], 64).response_ids) for u in step)
    assert nll["sequence"] / nll["token"] == pytest.approx(tokens / len(step), rel=1e-4)
    assert tokens / len(step) > 2  # the two readings differ by the mean response length


def test_batch_unit_example_gives_sft_the_steps_of_clo(workdir, tmp_path):
    d, rows = workdir
    steps = {}
    for method, unit in (("sft", "unit"), ("sft", "example"), ("clo", "unit"), ("clo", "example")):
        res = train(_cfg(d, method=method, epochs=1, batch_unit=unit, eval_every=100), d / "train.jsonl", None,
                    tmp_path / f"{method}-{unit}")
        steps[method, unit] = res.metrics["steps"]
    # 16 examples: sft has 32 row units (8 rows a step: 4 steps), clo 16 quadruples (2 steps);
    # counting examples, sft takes both rows of 8 examples a step (2 steps)
    assert steps == {("sft", "unit"): 4, ("sft", "example"): 2, ("clo", "unit"): 2, ("clo", "example"): 2}
    assert math.ceil(2 * len(rows) / 8) == 4
