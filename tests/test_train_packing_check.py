"""Packing decided by what the attention implementation does, and checked before training."""

import json

import pytest
import torch

from clo.config import config_from_dict
from clo.testing import tiny_model
from clo.train.logprobs import (
    PackedLogProbs,
    PackingError,
    check_packing,
    pack_sequences,
    packing_layout,
    pad_sequences,
    padded_sequence_logps,
    score,
)

SEQS = [([5, 6, 7], [8, 9, 10, 11]), ([12, 13], [14, 15, 16]), ([17, 18, 19, 20], [21, 22])]


@pytest.fixture(scope="module")
def leaky():
    """An implementation registered without a mask builder (as a kernel-hub kernel can be):
    transformers then passes no mask and packed sequences attend to each other."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register("clo_test_leaky", sdpa_attention_forward)
    return "clo_test_leaky"


@pytest.mark.parametrize("impl, expected", [
    ("eager", ("rows", False)), ("sdpa", ("rows", False)),
    ("flash_attention_2", ("one_row", True)), ("flash_attention_3", ("one_row", True)),
    ("flex_attention", ("one_row", False)),
])
def test_layout_follows_the_mask_builder(impl, expected):
    m = tiny_model("llama")
    m.config._attn_implementation = impl
    assert packing_layout(m) == expected


def test_a_kernel_hub_name_with_flash_masks_is_packed_in_one_row_with_boundaries():
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    # What transformers registers for `kernels-community/flash-attn2`: the flash mask builder.
    AttentionMaskInterface.register("kernels-community/flash-attn2", flash_attention_mask)
    m = tiny_model("llama")
    m.config._attn_implementation = "kernels-community/flash-attn2"
    assert packing_layout(m) == ("one_row", True)


def test_varlen_boundaries_of_a_one_row_batch_hand_checked():
    b = pack_sequences(SEQS, None)
    assert b.seq_lens == (7, 5, 6)
    kw = b.varlen_kwargs()
    assert kw["cu_seq_lens_q"].tolist() == [0, 7, 12, 18] and kw["max_length_q"] == 7
    assert kw["cu_seq_lens_k"] is kw["cu_seq_lens_q"]
    # Several rows: no boundaries (the kernels' varlen path takes one row).
    assert pack_sequences(SEQS, 7).seq_lens is None and pack_sequences(SEQS, 7).varlen_kwargs() == {}


def test_padded_layout_scores_like_the_reference_implementation():
    m = tiny_model("llama")
    w = PackedLogProbs(m)
    with torch.no_grad():
        torch.testing.assert_close(score(w, pad_sequences(SEQS)), padded_sequence_logps(m, SEQS), atol=1e-5, rtol=0)


def test_check_passes_for_sdpa_and_stops_a_leaking_kernel(leaky):
    m = tiny_model("llama")
    w = PackedLogProbs(m)
    with torch.no_grad():
        assert check_packing(lambda b: score(w, b), SEQS, None, 0, torch.float32, "cpu") < 1e-5
        m.config._attn_implementation = leaky
        with pytest.raises(PackingError, match="attends across the sequences"):
            check_packing(lambda b: score(w, b), SEQS, None, 0, torch.float32, "cpu")


def test_training_with_a_leaking_kernel_stops_before_step_one(leaky, tmp_path):
    from clo.testing import tiny_tokenizer
    from clo.train.trainer import train

    tiny_model("llama", vocab_size=512).save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    rec = {"id": "a", "tgt_lang": "de", "x_en": "what is the cat", "y_en": "the cat runs",
           "x_tgt": "was ist die Katze", "y_tgt": "die Katze läuft"}
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({**rec, "id": str(i)}) + "\n" for i in range(2)))
    cfg = config_from_dict({"model": str(tmp_path / "model"), "lang": "de", "train": {
        "batch_size": 2, "max_length": 64, "attn_implementation": leaky,
        "reference_cache": str(tmp_path / "ref")}})
    with pytest.raises(PackingError):
        train(cfg, tmp_path / "train.jsonl", None, tmp_path / "run")
    assert not (tmp_path / "run" / "result.json").exists()
    log = tmp_path / "run" / "log.jsonl"
    assert not log.exists() or not log.read_text().strip()
