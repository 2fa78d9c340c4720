import json

import pytest
import torch

from clo.eval.generation import generate, left_pad
from clo.formatting import encode_prompt
from clo.testing import tiny_model, tiny_tokenizer

PROMPTS = ["Hi", "Tell me a long story about a cat and a dog please", "Why?", "Name three colours of the sea"]


@pytest.fixture(scope="module")
def mt():
    return tiny_model("llama", vocab_size=512, hidden=64), tiny_tokenizer()


def _greedy_one(model, tok, prompt, n):
    ids = torch.tensor([encode_prompt(tok, prompt)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    row = out[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in row:
        row = row[:row.index(tok.eos_token_id)]
    return tok.decode(row, skip_special_tokens=True).strip()


def test_batched_greedy_equals_one_by_one(mt):
    model, tok = mt
    got = generate(model, tok, PROMPTS, max_new_tokens=6, temperature=0.0, batch_size=3)
    assert got == [_greedy_one(model, tok, p, 6) for p in PROMPTS]


def test_sampling_is_seeded(mt):
    model, tok = mt
    a = generate(model, tok, PROMPTS, max_new_tokens=6, seed=1, batch_size=2)
    assert a == generate(model, tok, PROMPTS, max_new_tokens=6, seed=1, batch_size=2)
    assert a != generate(model, tok, PROMPTS, max_new_tokens=6, seed=2, batch_size=2)


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_cli_eval_belebele(shared_data, tmp_path, capsys):
    from clo.cli import main

    model, tok = tiny_model("llama", vocab_size=512), tiny_tokenizer()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    (tmp_path / "d" / "belebele").mkdir(parents=True)
    rows = [json.loads(x) for x in (shared_data / "belebele" / "deu_Latn.jsonl").read_text().splitlines()[:2]]
    for r in rows:
        r["flores_passage"] = r["flores_passage"][:100]
    (tmp_path / "d" / "belebele" / "deu_Latn.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = main(["eval", "belebele", "--model", str(tmp_path / "m"), "--lang", "de", "--data-dir",
               str(tmp_path / "d"), "--output", str(tmp_path / "o"), "--template", "harness"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    doc = json.loads((tmp_path / "o" / "belebele-de-harness.json").read_text())
    assert printed == doc["metrics"] and doc["metrics"]["n"] == 2
    assert doc["model"].startswith(str(tmp_path / "m") + "@")  # directory + digest of its files
    assert main(["eval", "mmmlu", "--template", "native"]) == 2  # a belebele-only flag


# ---------------------------------------------------------------------------------------------
# Sampling is seeded per item (the paper's temperature 0.6): an item's tokens do not depend on
# the batch it ran in, the batch size, the limit, or what an interrupted run had finished.

SAMPLED = [f"Question {i}: " + "tell me about the sea and " * (i % 5) + "Why?" for i in range(40)]


def _ids_by_prompt(model, tok, prompts, **kw):
    from clo.eval.generation import iter_generate_ids

    out = {}
    for idx, rows in iter_generate_ids(model, tok, prompts, **kw):
        for i, row in zip(idx, rows):
            out[prompts[i]] = row
    return out


def test_sampled_tokens_do_not_depend_on_the_batch(mt):
    model, tok = mt
    kw = {"max_new_tokens": 10, "temperature": 0.6, "top_p": 0.9, "seed": 3}
    one = _ids_by_prompt(model, tok, SAMPLED, batch_size=1, **kw)
    assert _ids_by_prompt(model, tok, SAMPLED, batch_size=4, **kw) == one
    assert _ids_by_prompt(model, tok, SAMPLED[::-1], batch_size=7, **kw) == one
    assert _ids_by_prompt(model, tok, SAMPLED[5:17], batch_size=4, **kw) == {p: one[p] for p in SAMPLED[5:17]}
    # ... and it is sampling: not the greedy tokens, and another seed (MMMLU's next attempt) differs
    greedy = _ids_by_prompt(model, tok, SAMPLED, batch_size=4, max_new_tokens=10, temperature=0.0)
    assert sum(greedy[p] != one[p] for p in SAMPLED) > 20
    other = _ids_by_prompt(model, tok, SAMPLED, batch_size=4, **{**kw, "seed": 4})
    assert sum(other[p] != one[p] for p in SAMPLED) > 20
    assert len({tuple(v) for v in one.values()}) == len(SAMPLED)


def test_sample_top_p_inverts_the_nucleus_distribution():
    from clo.eval.generation import sample_top_p

    logits = torch.tensor([[0.2, 0.5, 0.3]]).log().repeat(4, 1)
    # nucleus at top_p 0.75: tokens 1 (0.5) and 2 (0.3), renormalised to 0.625 / 0.375
    u = torch.tensor([0.0, 0.62, 0.63, 0.999])
    assert sample_top_p(logits, u, temperature=1.0, top_p=0.75).tolist() == [1, 1, 2, 2]
    # top_p 1 keeps all three: cumulative 0.5, 0.8, 1.0
    assert sample_top_p(logits, torch.tensor([0.49, 0.51, 0.79, 0.81]), temperature=1.0,
                        top_p=1.0).tolist() == [1, 2, 2, 0]
    # a tiny top_p keeps the most likely token alone
    assert sample_top_p(logits, u, temperature=1.0, top_p=1e-6).tolist() == [1, 1, 1, 1]


class _Killed(RuntimeError):
    pass


def _fidelity(monkeypatch, tmp_path, mt, out, *, limit, batch_size, fail_after=None):
    """Run the fidelity task at temperature 0.6 and return its responses, which are the
    generated token ids (decode_response is replaced by the ids as JSON)."""
    from clo.config import load_config
    from clo.eval import evaluate
    from clo.eval import generation as gen

    model = mt[0]
    monkeypatch.setattr(gen, "decode_response", lambda tok, ids, eos: json.dumps(list(ids)))
    monkeypatch.setattr("clo.eval.fidelity._detect", lambda texts: ["de"] * len(texts))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(p + "\n" for p in SAMPLED), encoding="utf-8")
    from transformers import GenerationMixin

    calls = []
    real = GenerationMixin.generate

    def counted(self, *a, **kw):
        if fail_after is not None and len(calls) == fail_after:
            raise _Killed("killed")
        calls.append(kw["input_ids"].shape[0])
        return real(self, *a, **kw)

    monkeypatch.setattr(type(model), "generate", counted)
    cfg = load_config(None, ["lang=de", "eval.temperature=0.6", "eval.top_p=0.9", "eval.max_new_tokens=8"])
    evaluate("fidelity", mt, cfg, out, prompts_file=str(prompts), limit=limit, batch_size=batch_size)
    records = json.loads((out / "fidelity-de.json").read_text())["records"]
    return [json.loads(r["response"]) for r in records], sum(calls)


def test_sampled_evaluation_same_for_any_batch_size_and_limit(mt, tmp_path, monkeypatch):
    full, _ = _fidelity(monkeypatch, tmp_path, mt, tmp_path / "a", limit=40, batch_size=4)
    assert len(full) == 40 and len({tuple(r) for r in full}) == 40
    one, _ = _fidelity(monkeypatch, tmp_path, mt, tmp_path / "b", limit=40, batch_size=1)
    assert one == full
    first, _ = _fidelity(monkeypatch, tmp_path, mt, tmp_path / "c", limit=20, batch_size=4)
    assert first == full[:20]
    # a larger limit in the same directory reuses the 20 and generates only the other 20
    more, generated = _fidelity(monkeypatch, tmp_path, mt, tmp_path / "c", limit=40, batch_size=3)
    assert more == full and generated == 20


def test_killed_and_resumed_sampled_evaluation_gives_the_same_outputs(mt, tmp_path, monkeypatch):
    full, _ = _fidelity(monkeypatch, tmp_path, mt, tmp_path / "a", limit=40, batch_size=4)
    out = tmp_path / "b"
    with pytest.raises(_Killed):
        _fidelity(monkeypatch, tmp_path, mt, out, limit=40, batch_size=4, fail_after=3)
    cache = out / "fidelity-de.cache.jsonl"
    lines = cache.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + 12  # the header and the three finished batches
    # killed again while writing the next item: a torn last line
    with cache.open("a", encoding="utf-8") as f:
        f.write('{"key": "7", "val')
    resumed, generated = _fidelity(monkeypatch, tmp_path, mt, out, limit=40, batch_size=5)
    assert resumed == full
    assert generated == 40 - 12
    assert len(cache.read_text(encoding="utf-8").splitlines()) == 1 + 40  # the torn line is gone
