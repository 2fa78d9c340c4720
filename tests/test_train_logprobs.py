"""Packed, chunked log-probs against a padded full-logits implementation, and their gradients."""

import pytest
import torch

from clo.testing import tiny_model
from clo.train.logprobs import (
    pack_sequences,
    packed_sequence_logps,
    padded_sequence_logps,
    token_logps,
)


def _random_seqs(n, seed=0, vocab=500):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = torch.randint(3, vocab, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        r = torch.randint(3, vocab, (int(torch.randint(1, 20, (1,), generator=g)),), generator=g).tolist()
        out.append((p, r))
    return out


def test_pack_layout_hand_checked():
    b = pack_sequences([([5, 6], [7, 8, 9]), ([10], [11])], row_capacity=None)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1]]
    # Token 7 is predicted by the hidden state of 6 (flat index 1), 8 by 7, 9 by 8; 11 by 10 (index 5).
    assert b.gather_index.tolist() == [1, 2, 3, 5]
    assert b.targets.tolist() == [7, 8, 9, 11]
    assert b.seq_index.tolist() == [0, 0, 0, 1]
    assert b.response_counts().tolist() == [3, 1]
    rows = pack_sequences([([5, 6], [7, 8, 9]), ([10], [11]), ([1, 2], [3])], row_capacity=5, pad_id=0)
    # First-fit decreasing: [seq0 (5)] and [seq1 (2), seq2 (3)]; the shorter row is padded with
    # a filler whose positions restart, so it is a separate sequence.
    assert rows.input_ids.tolist() == [[5, 6, 7, 8, 9], [10, 11, 1, 2, 3]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]]
    short = pack_sequences([([5, 6], [7, 8, 9]), ([10], [11])], row_capacity=5)
    assert short.input_ids.tolist() == [[5, 6, 7, 8, 9], [10, 11, 0, 0, 0]]
    assert short.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]]
    with pytest.raises(ValueError, match="empty"):
        pack_sequences([([], [1])])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2"])
@pytest.mark.parametrize("cap", [None, 12])
def test_packed_equals_padded(arch, cap):
    model = tiny_model(arch, vocab_size=512)
    seqs = _random_seqs(7, seed=1)
    with torch.no_grad():
        padded = padded_sequence_logps(model, seqs)
        packed, counts = packed_sequence_logps(model, pack_sequences(seqs, cap), chunk_size=5)
    assert counts.tolist() == [len(r) for _, r in seqs]
    torch.testing.assert_close(packed, padded, atol=1e-4, rtol=0)


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("head_trainable", [False, True])
def test_chunked_head_matches_autograd(softcap, head_trainable):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(11, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(37, 8, generator=g, dtype=torch.float64, requires_grad=head_trainable)
    b = torch.randn(37, generator=g, dtype=torch.float64, requires_grad=head_trainable)
    t = torch.randint(0, 37, (11,), generator=g)
    upstream = torch.randn(11, generator=g, dtype=torch.float64)

    def reference():
        z = h @ w.T + b
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        return z.log_softmax(-1).gather(1, t[:, None]).squeeze(1)

    ref = reference()
    (ref * upstream).sum().backward()
    want = [x.grad.clone() for x in (h, w, b) if x.requires_grad]
    for x in (h, w, b):
        x.grad = None
    ours = token_logps(h, w, b, t, softcap, chunk_size=4)
    torch.testing.assert_close(ours, ref.float(), atol=1e-6, rtol=1e-6)  # fp32 output
    (ours * upstream.float()).sum().backward()
    got = [x.grad for x in (h, w, b) if x.requires_grad]
    assert len(got) == len(want) == (3 if head_trainable else 1)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)  # logits are fp32 by design


def test_packed_gradients_equal_padded_gradients():
    seqs = _random_seqs(5, seed=3)
    grads = []
    for packed in (True, False):
        model = tiny_model("llama", vocab_size=512)
        out = (packed_sequence_logps(model, pack_sequences(seqs, None), chunk_size=7)[0] if packed
               else padded_sequence_logps(model, seqs))
        out.sum().backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)
