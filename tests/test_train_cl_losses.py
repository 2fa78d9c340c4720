"""The cross-lingual objective family (train.cl_loss): each preference term against TRL's implementation
of the same loss on the same log-probs, one hand-derived value each, and training runs without a reference."""

import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from clo.train.losses import (
    CL_LOSSES,
    KEYS,
    REFERENCE_FREE,
    clo_loss,
    hinge_preference,
    ipo_preference,
    orpo_preference,
    robust_preference,
    sigmoid_preference,
    simpo_preference,
)

TOL = 1e-6


def _pairs(n=16, seed=0):
    """Summed log-probs of chosen/rejected responses (policy and reference) and their token counts."""
    g = torch.Generator().manual_seed(seed)
    counts_w = torch.randint(1, 40, (n,), generator=g)
    counts_l = torch.randint(1, 40, (n,), generator=g)
    w = -(torch.rand(n, generator=g) * 2.5 + 0.05) * counts_w  # per-token log-probs in (-2.55, -0.05)
    lo = -(torch.rand(n, generator=g) * 2.5 + 0.05) * counts_l
    ref_w = w + torch.randn(n, generator=g) * 8
    ref_l = lo + torch.randn(n, generator=g) * 8
    return w, lo, ref_w, ref_l, counts_w, counts_l


# -- TRL's implementations, called on the same tensors ------------------------------------------------

class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather_for_metrics(x):
        return x

    @staticmethod
    def gather(x):
        return x


def _trl_dpo(loss_type, w, lo, ref_w, ref_l, counts_w, counts_l, beta, label_smoothing=0.0):
    """DPOTrainer._compute_loss with a stub trainer and a stub model whose per-token log-probs sum to
    the given sequence log-probs over completion masks of the given lengths (TRL's IPO reads them)."""
    from trl import DPOTrainer

    n = len(w)
    counts = torch.cat([counts_w, counts_l])
    width = int(counts.max()) + 1  # one prompt token, then the completion
    completion = torch.zeros(2 * n, width, dtype=torch.long)
    for i, c in enumerate(counts.tolist()):
        completion[i, 1 : 1 + c] = 1
    per_token = torch.zeros(2 * n, width - 1, dtype=w.dtype)
    per_token[:, 0] = torch.cat([w, lo])  # the whole sum on the first completion token: exact

    def model(**kw):
        z = torch.zeros(2 * n, width - 1)
        return SimpleNamespace(log_probs=per_token, entropy=z, mean_logits=z, is_top1=z.bool())

    stub = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_Accelerator(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
        beta=beta, label_smoothing=label_smoothing, use_weighting=False, _metrics={"train": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.ones(2 * n, width, dtype=torch.long), "attention_mask": torch.ones(2 * n, width),
              "completion_mask": completion, "ref_chosen_logps": ref_w, "ref_rejected_logps": ref_l}
    with torch.no_grad():
        return DPOTrainer._compute_loss(stub, model, inputs, return_outputs=False)


def _trl_mean_logps(counts, seed=1):
    """TRL's length normalisation (CPOTrainer.get_batch_logps, average_log_prob=True) of random
    logits over completions of the given lengths, and the matching sums (average_log_prob=False)."""
    from trl.experimental.cpo import CPOTrainer

    g = torch.Generator().manual_seed(seed)
    n, width = len(counts), int(counts.max()) + 2
    logits = torch.randn(n, width, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (n, width), generator=g)
    for i, c in enumerate(counts.tolist()):
        labels[i, : width - c] = -100  # prompt and padding ignored
    mean = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    total = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=False)
    return mean, total


@pytest.mark.parametrize("loss_type, ours, smoothing", [
    ("sigmoid", lambda w, lo, nw, nl, b, e: sigmoid_preference(w, lo, b), 0.0),
    ("ipo", lambda w, lo, nw, nl, b, e: ipo_preference(w, lo, nw, nl, b), 0.0),
    ("hinge", lambda w, lo, nw, nl, b, e: hinge_preference(w, lo, b), 0.0),
    ("robust", lambda w, lo, nw, nl, b, e: robust_preference(w, lo, b, e), 0.2),
])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_reference_terms_equal_trl_dpo(loss_type, ours, smoothing, beta):
    w, lo, ref_w, ref_l, nw, nl = _pairs()
    trl = _trl_dpo(loss_type, w, lo, ref_w, ref_l, nw, nl, beta, smoothing)
    losses, r_w, r_l = ours(w - ref_w, lo - ref_l, nw, nl, beta, smoothing)
    assert losses.shape == (16,)
    assert losses.mean().item() == pytest.approx(trl.item(), abs=TOL)
    assert torch.allclose(r_w, beta * (w - ref_w)) and torch.allclose(r_l, beta * (lo - ref_l))


@pytest.mark.parametrize("beta, gamma, smoothing", [(2.0, 0.5, 0.0), (0.1, 1.0, 0.0), (2.5, 1.25, 0.1)])
def test_simpo_equals_trl_cpo(beta, gamma, smoothing):
    from trl.experimental.cpo import CPOTrainer

    _, _, _, _, nw, nl = _pairs()
    mean_w, sum_w = _trl_mean_logps(nw, seed=1)
    mean_l, sum_l = _trl_mean_logps(nl, seed=2)
    stub = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=gamma, beta=beta, label_smoothing=smoothing,
                           accelerator=_Accelerator())
    trl_losses, trl_w, trl_l = CPOTrainer.cpo_loss(stub, mean_w, mean_l)
    losses, r_w, r_l = simpo_preference(sum_w, sum_l, nw, nl, beta, gamma, smoothing)
    assert torch.allclose(losses, trl_losses, atol=TOL, rtol=0)
    assert torch.allclose(r_w, trl_w, atol=TOL, rtol=0) and torch.allclose(r_l, trl_l, atol=TOL, rtol=0)


@pytest.mark.parametrize("beta", [0.1, 0.25])
def test_orpo_equals_trl_odds_ratio(beta):
    from trl.experimental.orpo import ORPOTrainer

    _, _, _, _, nw, nl = _pairs()
    mean_w, sum_w = _trl_mean_logps(nw, seed=3)
    mean_l, sum_l = _trl_mean_logps(nl, seed=4)
    stub = SimpleNamespace(beta=beta, accelerator=_Accelerator())
    trl_terms, trl_w, trl_l, _, _ = ORPOTrainer.odds_ratio_loss(stub, mean_w, mean_l)
    losses, r_w, r_l = orpo_preference(sum_w, sum_l, nw, nl, beta)
    # TRL's ORPO loss is nll - mean(beta * log sigma(log odds)): our term is minus its second part.
    assert torch.allclose(losses, -trl_terms.double(), atol=TOL, rtol=0)
    assert torch.allclose(r_w, trl_w.double(), atol=TOL, rtol=0) and torch.allclose(r_l, trl_l.double(), atol=TOL,
                                                                                      rtol=0)


@pytest.mark.parametrize("cl_loss", CL_LOSSES)
def test_clo_loss_family_sums_both_directions_and_keeps_lambda(cl_loss):
    """L_CLO = λ NLL + (1-λ)(ℓ_en + ℓ_tgt) for every cl_loss; reference-free ones accept ref None."""
    g = torch.Generator().manual_seed(5)
    counts = {k: torch.randint(1, 30, (6,), generator=g) for k in KEYS}
    policy = {k: -(torch.rand(6, generator=g, dtype=torch.float64) + 0.1) * counts[k] for k in KEYS}
    ref = None if cl_loss in REFERENCE_FREE else {k: policy[k] + torch.randn(6, generator=g, dtype=torch.float64)
                                                 for k in KEYS}
    nll = torch.tensor(1.3, dtype=torch.float64)
    kw = {"label_smoothing": 0.1} if cl_loss == "robust" else {}
    loss, m = clo_loss(policy, ref, nll, beta=0.3, lam=0.25, cl_loss=cl_loss, counts=counts, **kw)
    assert m["cl"].item() == pytest.approx(m["cl_en"].item() + m["cl_tgt"].item(), abs=1e-12)
    assert loss.item() == pytest.approx(0.25 * 1.3 + 0.75 * m["cl"].item(), abs=1e-12)
    assert {"margin_en", "acc_tgt", "reward_chosen_en", "reward_rejected_tgt"} <= set(m)
    if cl_loss in ("ipo", "orpo", "simpo"):
        with pytest.raises(ValueError, match="token counts"):
            clo_loss(policy, ref, nll, cl_loss=cl_loss)
    if cl_loss not in REFERENCE_FREE:
        with pytest.raises(KeyError, match="missing log-probs"):
            clo_loss(policy, None, nll, cl_loss=cl_loss, counts=counts, **kw)


def test_clo_loss_family_per_direction_equals_trl_dpo():
    """clo_loss(cl_loss=ipo)'s cl_en / cl_tgt are TRL's IPO loss on (x_en: y_en > y_tgt), (x_tgt: y_tgt > y_en)."""
    w, lo, ref_w, ref_l, nw, nl = _pairs(8, seed=7)
    w2, lo2, ref_w2, ref_l2, nw2, nl2 = _pairs(8, seed=8)
    policy = {"en_en": w, "en_tgt": lo, "tgt_tgt": w2, "tgt_en": lo2}
    ref = {"en_en": ref_w, "en_tgt": ref_l, "tgt_tgt": ref_w2, "tgt_en": ref_l2}
    counts = {"en_en": nw, "en_tgt": nl, "tgt_tgt": nw2, "tgt_en": nl2}
    _, m = clo_loss(policy, ref, torch.tensor(0.0), beta=0.2, cl_loss="ipo", counts=counts)
    assert m["cl_en"].item() == pytest.approx(_trl_dpo("ipo", w, lo, ref_w, ref_l, nw, nl, 0.2).item(), abs=TOL)
    assert m["cl_tgt"].item() == pytest.approx(_trl_dpo("ipo", w2, lo2, ref_w2, ref_l2, nw2, nl2, 0.2).item(),
                                               abs=TOL)


def test_hand_derived_values():
    t = lambda *v: torch.tensor(v, dtype=torch.float64)
    sp = lambda x: math.log1p(math.exp(-x))  # -log sigmoid(x)
    # sigmoid: beta (Δw - Δl) = 0.1 * 10 = 1
    assert sigmoid_preference(t(4.0), t(-6.0), 0.1)[0].item() == pytest.approx(sp(1.0), abs=1e-12)
    # ipo: per token 2/4 - (-2/2) = 1.5, 1/(2 beta) = 1: (1.5 - 1)^2
    assert ipo_preference(t(2.0), t(-2.0), t(4), t(2), 0.5)[0].item() == pytest.approx(0.25, abs=1e-12)
    # hinge: 1 - 0.1 * 4 = 0.6, and 0 past the margin
    assert hinge_preference(t(1.0, 20.0), t(-3.0, 0.0), 0.1)[0].tolist() == pytest.approx([0.6, 0.0], abs=1e-12)
    # robust, eps 1/4, z = 1: (3/4 softplus(-1) - 1/4 softplus(1)) / (1/2)
    expect = (0.75 * sp(1.0) - 0.25 * sp(-1.0)) / 0.5
    assert robust_preference(t(10.0), t(0.0), 0.1, 0.25)[0].item() == pytest.approx(expect, abs=1e-12)
    assert robust_preference(t(10.0), t(0.0), 0.1, 0.0)[0].item() == pytest.approx(sp(1.0), abs=1e-12)
    # orpo: per-token probabilities 1/2 (odds 1) and 1/5 (odds 1/4): -beta log sigma(log 4) = beta log(5/4)
    orpo = orpo_preference(t(3 * math.log(0.5)), t(2 * math.log(0.2)), t(3), t(2), 0.1)[0].item()
    assert orpo == pytest.approx(0.1 * math.log(1.25), abs=1e-12)
    # simpo: beta 2, per token -1 vs -1.5, gamma 0.5: z = 2 * 0.5 - 0.5 = 0.5
    assert simpo_preference(t(-4.0), t(-3.0), t(4), t(2), 2.0, 0.5)[0].item() == pytest.approx(sp(0.5), abs=1e-12)


def test_defaults_follow_trl():
    from trl.experimental.cpo import CPOConfig

    from clo.train.config import TrainConfig

    assert TrainConfig().simpo_gamma == CPOConfig.__dataclass_fields__["simpo_gamma"].default == 0.5
    assert TrainConfig().cl_loss == "sigmoid" and TrainConfig().label_smoothing == 0.0


def test_config_validates_label_smoothing():
    from pydantic import ValidationError

    from clo.train.config import TrainConfig

    assert TrainConfig(cl_loss="robust", label_smoothing=0.1).label_smoothing == 0.1
    assert TrainConfig(cl_loss="simpo", label_smoothing=0.1).cl_loss == "simpo"
    with pytest.raises(ValidationError, match="needs train.label_smoothing"):
        TrainConfig(cl_loss="robust")
    with pytest.raises(ValidationError, match="has no effect with train.cl_loss='sigmoid'"):
        TrainConfig(label_smoothing=0.1)
    with pytest.raises(ValidationError, match="less than 0.5"):
        TrainConfig(cl_loss="robust", label_smoothing=0.5)
    with pytest.raises(ValidationError):
        TrainConfig(cl_loss="kto")


def test_needs_reference_follows_cl_loss():
    from clo.train.config import TrainConfig
    from clo.train.methods import METHODS

    clo = METHODS["clo"]
    assert clo.needs_reference(TrainConfig()) and clo.needs_reference(TrainConfig(cl_loss="ipo"))
    assert not clo.needs_reference(TrainConfig(cl_loss="simpo"))
    assert not clo.needs_reference(TrainConfig(cl_loss="orpo"))
    assert METHODS["dpo"].needs_reference(TrainConfig()) and not METHODS["sft"].needs_reference(TrainConfig())


def test_a_grid_variant_sets_cl_loss(tmp_path):
    from clo.config_base import ConfigError
    from clo.experiments.config import expand, grid_from_dict

    tree = {"name": "t", "output_dir": str(tmp_path / "grid"), "models": ["org/Tiny-1"], "langs": ["de"],
            "base": {"data": {"val_fraction": 0.25, "subsets": [4]}, "eval": {"tasks": ["belebele"]}},
            "methods": ["clo", {"name": "clo-simpo", "method": "clo",
                                "set": {"train.cl_loss": "simpo", "train.beta": 2.0}},
                        {"name": "clo-robust", "method": "clo",
                         "set": {"train.cl_loss": "robust", "train.label_smoothing": 0.1}}],
            "sizes": [None], "dataset": {"de": "de.jsonl"}, "include_base": False}
    runs = {r.variant: r.config.train for r in expand(grid_from_dict(tree))}
    assert runs["clo"].cl_loss == "sigmoid"
    assert (runs["clo-simpo"].cl_loss, runs["clo-simpo"].beta) == ("simpo", 2.0)
    assert (runs["clo-robust"].cl_loss, runs["clo-robust"].label_smoothing) == ("robust", 0.1)
    tree["methods"] = [{"name": "x", "method": "clo", "set": {"train.cl_loss": "robust"}}]
    with pytest.raises(ConfigError, match="methods.0 \\(x\\).*needs train.label_smoothing"):
        grid_from_dict(tree)


# -- training runs on a tiny random Llama ---------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tiny_workdir, quadruples):
    return tiny_workdir("tiny_cl", train=quadruples(16, 0, "t"), val=quadruples(8, 1, "v"))


def _cfg(workdir, cache, **train):
    from clo.config import config_from_dict

    base = {"method": "clo", "lr": 2e-2, "min_lr": 2e-2, "batch_size": 8, "eval_every": 100, "max_length": 64,
            "reference_cache": str(cache), "max_grad_norm": None}
    base.update(train)
    return config_from_dict({"model": str(workdir / "model"), "lang": "de", "train": base})


def _log(run):
    rows = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if any(k.startswith("train/") for k in r)]


@pytest.mark.slow
def test_simpo_run_needs_no_reference_and_learns(workdir, tmp_path):
    from clo.train.trainer import train

    cache = tmp_path / "refcache"
    res = train(_cfg(workdir, cache, cl_loss="simpo", beta=2.0, epochs=10), workdir / "train.jsonl",
                workdir / "val.jsonl", tmp_path / "run")
    assert res.metrics["reference"] == {} and res.metrics["reference_s"] < 0.5
    assert not cache.exists()  # no reference pass, nothing cached
    log = _log(tmp_path / "run")
    first, last = log[0], log[-1]
    assert last["train/loss"] < first["train/loss"] - 0.1
    acc = lambda r: (r["train/acc_en"] + r["train/acc_tgt"]) / 2
    assert acc(last) >= 0.9 and acc(last) > acc(first)
    assert last["train/margin_en"] > first["train/margin_en"] and last["train/margin_tgt"] > first["train/margin_tgt"]
    assert res.metrics["best_val_loss"] is not None and math.isfinite(res.metrics["best_val_loss"])


@pytest.mark.slow
def test_orpo_run_needs_no_reference_and_learns(workdir, tmp_path):
    from clo.train.trainer import train

    cache = tmp_path / "refcache"
    res = train(_cfg(workdir, cache, cl_loss="orpo", beta=0.5, epochs=10), workdir / "train.jsonl", None,
                tmp_path / "run")
    assert res.metrics["reference"] == {} and not cache.exists()
    log = _log(tmp_path / "run")
    first, last = log[0], log[-1]
    assert last["train/cl"] < first["train/cl"] and last["train/nll"] < first["train/nll"]
    assert last["train/acc_en"] >= 0.75 and last["train/acc_tgt"] >= 0.75


@pytest.mark.parametrize("cl_loss", ["simpo", "ipo"])
def test_one_step_changes_exactly_the_trained_parameters(workdir, tmp_path, cl_loss):
    from transformers import AutoModelForCausalLM

    from clo.train.trainer import train

    res = train(_cfg(workdir, tmp_path / "refcache", cl_loss=cl_loss, epochs=0.5, lr=5e-3, min_lr=5e-3),
                workdir / "train.jsonl", None, tmp_path / "run")
    assert res.metrics["steps"] == 1
    assert (res.metrics["reference"] == {}) == (cl_loss in REFERENCE_FREE)
    before = dict(AutoModelForCausalLM.from_pretrained(workdir / "model").named_parameters())
    after = dict(AutoModelForCausalLM.from_pretrained(res.best_checkpoint).named_parameters())
    trained = [n for n in before if ".self_attn." in n]
    assert len(trained) == 2 * 4
    for n, p in before.items():
        if n in trained:
            assert not torch.equal(p, after[n]), f"{n} did not change"
        else:
            assert torch.equal(p, after[n]), f"{n} changed but is frozen"
