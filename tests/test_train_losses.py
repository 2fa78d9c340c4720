"""The objectives against hand-derived values and against TRL's sigmoid DPO loss."""

import math

import pytest
import torch

from clo.train.losses import KEYS, clo_loss, dpo_loss, sft_nll


def _d(**kw):
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in kw.items()}


def test_clo_loss_hand_derived():
    # Example 0: Δ_en_en=10, Δ_en_tgt=0 -> z_en = 0.1*10 = 1; Δ_tgt_tgt=0, Δ_tgt_en=20 -> z_tgt = -2.
    # Example 1: all Δ = 0 -> z = 0 both ways.
    policy = _d(en_en=[-5.0, -3.0], en_tgt=[-7.0, -4.0], tgt_tgt=[-9.0, -2.0], tgt_en=[-1.0, -6.0])
    ref = _d(en_en=[-15.0, -3.0], en_tgt=[-7.0, -4.0], tgt_tgt=[-9.0, -2.0], tgt_en=[-21.0, -6.0])
    nll = torch.tensor(2.5, dtype=torch.float64)
    loss, m = clo_loss(policy, ref, nll, beta=0.1, lam=0.5)
    sp = lambda x: math.log1p(math.exp(-x))  # -log sigmoid(x)
    cl_en = (sp(1.0) + math.log(2)) / 2
    cl_tgt = (sp(-2.0) + math.log(2)) / 2
    assert sp(1.0) == pytest.approx(0.31326168751822286)
    assert m["cl_en"].item() == pytest.approx(cl_en, abs=1e-12)
    assert m["cl_tgt"].item() == pytest.approx(cl_tgt, abs=1e-12)
    assert m["cl"].item() == pytest.approx(cl_en + cl_tgt, abs=1e-12)
    assert loss.item() == pytest.approx(0.5 * 2.5 + 0.5 * (cl_en + cl_tgt), abs=1e-12)
    assert m["margin_en"].item() == pytest.approx(0.5)  # mean(1, 0)
    assert m["margin_tgt"].item() == pytest.approx(-1.0)  # mean(-2, 0)
    assert m["acc_en"].item() == 0.5 and m["acc_tgt"].item() == 0.0
    assert m["nll"].item() == 2.5


def test_clo_lambda_one_is_target_nll_and_gradient_ignores_preferences():
    policy = {k: torch.randn(3, requires_grad=True) for k in KEYS}
    ref = {k: torch.randn(3) for k in KEYS}
    nll = torch.tensor(1.7, requires_grad=True)
    loss, _ = clo_loss(policy, ref, nll, beta=0.1, lam=1.0)
    assert loss.item() == pytest.approx(1.7)
    loss.backward()
    assert nll.grad.item() == 1.0
    assert all(torch.equal(policy[k].grad, torch.zeros(3)) for k in KEYS)


def test_clo_lambda_zero_and_missing_key():
    policy = _d(en_en=[0.0], en_tgt=[0.0], tgt_tgt=[0.0], tgt_en=[0.0])
    loss, _ = clo_loss(policy, policy, torch.tensor(9.0, dtype=torch.float64), lam=0.0)
    assert loss.item() == pytest.approx(2 * math.log(2))
    with pytest.raises(KeyError, match="tgt_en"):
        clo_loss({k: v for k, v in policy.items() if k != "tgt_en"}, policy, torch.tensor(0.0))


def test_dpo_loss_hand_derived():
    # z = 0.5 * ((-1 - -2) - (-4 - -3)) = 0.5 * (1 - (-1)) = 1; and z = 0 for the second row.
    loss, m = dpo_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-4.0, -2.0]),
                       torch.tensor([-2.0, -2.0]), torch.tensor([-3.0, -2.0]), beta=0.5)
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1.0)) + math.log(2)) / 2, abs=1e-6)
    assert m["reward_chosen"].item() == pytest.approx(0.25)  # mean(0.5*1, 0)
    assert m["reward_rejected"].item() == pytest.approx(-0.25)
    assert m["margin"].item() == pytest.approx(0.5)
    assert m["accuracy"].item() == 0.5


def test_dpo_loss_and_logps_equal_trl_sigmoid(tmp_path):
    """TRL's DPOTrainer (sigmoid loss) on the same model and rows: same sequence log-probs, same loss."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from clo.testing import tiny_model, tiny_tokenizer
    from clo.train.logprobs import pack_sequences, packed_sequence_logps

    tok = tiny_tokenizer(chat_template=False)
    model = tiny_model("llama", vocab_size=512)
    rows = [{"prompt": "What is the capital", "chosen": " Paris is it.", "rejected": " Der Hund."},
            {"prompt": "Der schnelle", "chosen": " Fuchs springt", "rejected": " quick brown fox jumps over"}]
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, beta=0.1, loss_type=["sigmoid"],
                     precompute_ref_log_probs=True, report_to=[], use_cpu=True, max_length=128)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    seqs = []  # TRL's batch is [chosen rows..., rejected rows...]
    for ids, att, comp in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        ids = ids[att.bool()].tolist()
        n_prompt = int((att.bool() & ~comp.bool()).sum())
        seqs.append((ids[:n_prompt], ids[n_prompt:]))
    with torch.no_grad():
        ours_logps, _ = packed_sequence_logps(model, pack_sequences(seqs, None))
    # With our log-probs as its reference, TRL's policy log-ratios are all 0 (loss exactly log 2)
    # only if its policy log-probs equal ours.
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ours_logps[:2], ours_logps[2:]
    with torch.no_grad():
        assert trainer.compute_loss(model, batch).item() == pytest.approx(math.log(2), abs=1e-5)
    # Arbitrary reference values make the loss non-trivial (z far from 0, both signs).
    batch["ref_chosen_logps"] = torch.tensor([-60.0, -40.0])
    batch["ref_rejected_logps"] = torch.tensor([-30.0, -120.0])
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, batch)
    ours, _ = dpo_loss(ours_logps[:2], ours_logps[2:], batch["ref_chosen_logps"], batch["ref_rejected_logps"], 0.1)
    assert abs(trl_loss.item() - math.log(2)) > 0.1
    assert ours.item() == pytest.approx(trl_loss.item(), abs=1e-5)


def test_sft_nll_token_mean_and_global_normaliser():
    sums = torch.tensor([-6.0, -4.0])
    loss, m = sft_nll(sums, torch.tensor([3, 2]))
    assert loss.item() == pytest.approx(2.0) and m["nll"].item() == pytest.approx(2.0)
    # A micro-batch normalised by the global batch's 20 tokens contributes 10/20.
    assert sft_nll(sums, 20)[0].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no response tokens"):
        sft_nll(sums, 0)
