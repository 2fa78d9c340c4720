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
