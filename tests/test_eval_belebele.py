import json

import pytest
import torch

from clo import languages
from clo.config import load_config
from clo.eval import belebele as bb
from clo.eval import evaluate, loglik
from clo.eval.loglik import direct_loglik, encode_pair, has_sliding_window, score_batch, score_shared
from clo.testing import tiny_model, tiny_tokenizer


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_score_batch_equals_direct_computation(arch):
    # gpt2 has absolute positions (left padding must not shift them); gemma3's sliding window (16)
    # is shorter than the first context, so the cached continuation crosses it.
    model = tiny_model(arch, vocab_size=512)
    contexts = [list(range(5, 30)), [30, 31, 32], [40]]
    options = [[[40], [41, 42], [43, 44, 45], [46]],
               [[50, 51], [52], [53], [54, 55, 56, 57]],
               [[7], [8], [9], [10, 11]]]
    got = score_batch(model, contexts, options, pad_id=0)
    for c, opts, row in zip(contexts, options, got):
        for o, s in zip(opts, row):
            assert s == pytest.approx(direct_loglik(model, c, o), abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_score_shared_equals_direct_computation(arch):
    model = tiny_model(arch, vocab_size=512)
    p1, p2 = list(range(5, 25)), [60, 61, 62]
    items = [(p1 + [30, 31], [[40], [41, 42], [43, 44, 45], [46]]),
             (p1 + [32], [[50, 51], [52], [53], [54, 55, 56, 57]]),
             (p2 + [70, 71, 72, 73], [[7], [8], [9], [10, 11]]),
             ([80, 81], [[7], [8], [9], [10]])]
    got = score_shared(model, [[0, 1], [2], [3]], items, pad_id=0)
    for (c, opts), row in zip(items, got):
        for o, s in zip(opts, row):
            assert s == pytest.approx(direct_loglik(model, c, o), abs=1e-4)


def test_passage_sharing_runs_each_passage_once(shared_data):
    model, tok = tiny_model("llama", vocab_size=512), tiny_tokenizer()
    rows = _rows(shared_data, 4)  # rows 0-1 and 2-3 share passages
    assert rows[0]["flores_passage"] == rows[1]["flores_passage"] != rows[2]["flores_passage"]
    shapes = []
    h = model.register_forward_hook(lambda m, a, k, out: shapes.append(tuple(k["input_ids"].shape)), with_kwargs=True)
    en = languages.get("en")
    shared = bb.predict(model, tok, rows, en, template="harness", batch_size=4, progress=False, share_passages=True)
    h.remove()
    assert shapes[0][0] == 2 and shapes[1][0] == 4  # 2 passages, then 4 question suffixes
    whole = bb.predict(model, tok, rows, en, template="harness", batch_size=4, progress=False, share_passages=False)
    assert [r["pred"] for r in shared] == [r["pred"] for r in whole]
    for a, b in zip(shared, whole):
        assert a["loglik"] == pytest.approx(b["loglik"], abs=1e-4)


def test_sliding_window_models_do_not_share():
    assert has_sliding_window(tiny_model("gemma3", vocab_size=512))
    assert not has_sliding_window(tiny_model("llama", vocab_size=512))


def test_score_batch_single_token_options_one_forward():
    model = tiny_model("qwen2", vocab_size=512)
    calls = []
    model.register_forward_hook(lambda m, a, k, out: calls.append(k["input_ids"].shape), with_kwargs=True)
    got = score_batch(model, [[3, 4, 5], [6, 7]], [[[10], [11], [12], [13]]] * 2, pad_id=0)
    assert calls == [torch.Size([2, 3])]  # the context once for all four options, no second pass
    assert got[1][2] == pytest.approx(direct_loglik(model, [6, 7], [12]), abs=1e-5)


def test_encode_pair_moves_trailing_space_to_continuation(tiny_tok):
    ctx, cont = encode_pair(tiny_tok, "Answer: ", "A")
    assert ctx == tiny_tok.encode("Answer:")
    assert ctx + cont == tiny_tok.encode("Answer: A")
    with pytest.raises(ValueError, match="empty context"):
        encode_pair(tiny_tok, "", "A")


ROW = {"link": "l", "question_number": 1, "flores_passage": "P text.", "question": " Q? ",
       "mc_answer1": "a1", "mc_answer2": "a2", "mc_answer3": "a3", "mc_answer4": "a4", "correct_answer_num": "2",
       "dialect": "x"}


def _rows(shared_data, n, chars=160):
    rows = []
    with open(shared_data / "belebele" / "eng_Latn.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            r["flores_passage"] = r["flores_passage"][:chars]  # tiny models have 512 positions
            rows.append(r)
            if len(rows) == n:
                return rows


def test_predictions_and_resume(shared_data, tmp_path, monkeypatch):
    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=512)
    data = tmp_path / "data" / "belebele"
    data.mkdir(parents=True)
    rows = _rows(shared_data, 6)
    (data / "deu_Latn.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"eval.data_dir={tmp_path / 'data'}", "lang=de", "eval.batch_size=4"])
    scored = []
    real = loglik.score_batch
    monkeypatch.setattr(loglik, "score_batch", lambda m, c, o, p: scored.append(len(c)) or real(m, c, o, p))
    m1 = evaluate("belebele", (model, tok), cfg, tmp_path / "out", limit=3)
    assert m1["n"] == 3 and sum(scored) == 3
    m2 = evaluate("belebele", (model, tok), cfg, tmp_path / "out")  # resumes: scores only the 3 new items
    assert m2["n"] == 6 and sum(scored) == 6
    doc = json.loads((tmp_path / "out" / "belebele-de.json").read_text())
    assert set(doc) >= {"task", "model", "lang", "config", "data_hash", "metrics", "records"}
    de = languages.get("de")
    for row, rec in zip(rows, doc["records"]):
        ctx, conts = bb.render(row, de, "native")
        direct = [direct_loglik(model, *encode_pair(tok, ctx, c)) for c in conts]
        assert rec["pred"] == max(range(4), key=lambda k: (direct[k], -k))
        assert rec["loglik"] == pytest.approx(direct, abs=1e-4)
        assert rec["gold"] == int(row["correct_answer_num"]) - 1
    acc = sum(r["correct"] for r in doc["records"]) / 6
    assert m2["accuracy"] == pytest.approx(acc)
    assert (tmp_path / "out" / "belebele-de.md").read_text().startswith("# belebele (German, `de`)")


def test_bad_row_names_file_line_field(tmp_path):
    d = tmp_path / "belebele"
    d.mkdir()
    bad = dict(ROW)
    del bad["mc_answer3"]
    (d / "eng_Latn.jsonl").write_text(json.dumps(ROW) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"eng_Latn.jsonl:2: field 'mc_answer3' missing"):
        bb.load_rows(languages.get("en"), tmp_path)


def _lm_eval_available():
    try:
        import lm_eval  # noqa: F401
        return True
    except ImportError:
        return False


needs_lm_eval = pytest.mark.skipif(not _lm_eval_available(),
                                   reason="lm-eval cannot be imported (pip install lm-eval, the dev extra)")


@needs_lm_eval
def test_korean_template_matches_harness_on_tiny_model(shared_data):
    # Multi-token option labels (" 가)") exercise the cached continuation path against the harness.
    from clo.eval.harness import harness_predict

    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=512)
    ko = languages.get("ko")
    rows = _rows(shared_data, 4, chars=120)
    ours = bb.predict(model, tok, rows, ko, template="native", batch_size=3, progress=False)
    preds, ll, _ = harness_predict(model, tok, rows, ko, template="native", batch_size=3)
    assert [r["pred"] for r in ours] == preds
    for r, h in zip(ours, ll):
        assert r["loglik"] == pytest.approx(h, abs=1e-3)


@pytest.mark.slow
@needs_lm_eval
def test_english_harness_template_matches_lm_eval_on_smollm2(shared_data):
    from clo.eval.harness import harness_predict
    from clo.models import load_model

    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    en = languages.get("en")
    rows = bb.load_rows(en, shared_data, limit=8)
    ours = bb.predict(model, tok, rows, en, template="harness", batch_size=4, progress=False)
    preds, ll, _ = harness_predict(model, tok, rows, en, template="harness", batch_size=4)
    assert [r["pred"] for r in ours] == preds
    for r, h in zip(ours, ll):
        assert r["loglik"] == pytest.approx(h, abs=1e-3)
