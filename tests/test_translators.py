"""The translator package: one module per kind behind the registry, the cache key
("fingerprint") made of what determines a translation, the CTranslate2 compute type and converted
model directories, the device-aware batch budget (GPU memory detection monkeypatched: no GPU
here), and translating only the AlpacaEval instructions a grid uses."""

from __future__ import annotations

import json
import shutil

import pytest

from clo.data import translators as T
from clo.data.config import TranslatorConfig
from clo.data.translators import base, ct2

GIB = 1 << 30
# M2M100-1.2B's shapes (facebook/m2m100_1.2B config.json).
M2M100_12B = {"d_model": 1024, "encoder_layers": 24, "decoder_layers": 24, "encoder_ffn_dim": 8192,
              "decoder_ffn_dim": 8192, "vocab_size": 128112}


@pytest.fixture(scope="module")
def tiny_m2m(tmp_path_factory):
    from clo.data.testing import tiny_m2m100

    return tiny_m2m100(tmp_path_factory.mktemp("m2m"))


@pytest.fixture
def clo_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLO_CACHE", str(tmp_path / "clo-cache"))
    return tmp_path / "clo-cache"


# --- the package and its re-export ---------------------------------------------------------------


def test_one_module_per_kind_behind_one_registry():
    builtin = ("seq2seq", "causal", "openai", "identity")  # other tests register theirs too
    assert {k: T.TRANSLATORS[k].__module__ for k in builtin} == {
        "seq2seq": "clo.data.translators.seq2seq", "causal": "clo.data.translators.causal",
        "openai": "clo.data.translators.openai", "identity": "clo.data.translators.identity"}
    assert T.Translator is base.Translator


# --- the cache key -------------------------------------------------------------------------------


def _openai(monkeypatch, **kw):
    monkeypatch.setenv("CLO_FP_KEY", "k")
    return T.make_translator(TranslatorConfig(**{"kind": "openai", "model": "gpt-x", "api_key_env": "CLO_FP_KEY", **kw}))


def test_openai_key_is_the_model_not_the_endpoint(monkeypatch):
    a = _openai(monkeypatch, base_url="http://127.0.0.1:8000/v1").fingerprint()
    assert a == "openai/v1|model=gpt-x|prompt=1|t=0"
    # Where the endpoint is and how it is reached do not change a translation.
    for other in ({"base_url": "http://localhost:8000/v1"}, {}, {"timeout": 5, "concurrency": 1, "max_retries": 0},
                  {"base_url": "http://127.0.0.1:8000/v1", "batch_tokens": 64, "batch_size": 2}):
        assert _openai(monkeypatch, **other).fingerprint() == a, other
    assert _openai(monkeypatch, model="gpt-y").fingerprint() != a


def test_cache_hits_after_the_endpoint_address_changes(tmp_path, monkeypatch):
    """The report's case: the same server as localhost instead of 127.0.0.1 re-sent every request.
    Now the second run sends none (its address is not even listening)."""
    from clo.data.testing import FakeChatServer

    monkeypatch.setenv("CLO_FP_KEY", "k")
    texts = ["The dog sleeps in the garden.", "Write a poem about the sea."]
    with FakeChatServer() as server:
        cfg = TranslatorConfig(kind="openai", model="m", base_url=server.url, api_key_env="CLO_FP_KEY")
        first = T.translate_texts(texts, "en", "de", cfg, tmp_path / "c.sqlite", progress=False)
    moved = cfg.model_copy(update={"base_url": "http://localhost:9/v1", "timeout": 1.0, "max_retries": 0})
    st = T.TranslationStats()
    again = T.translate_texts(texts, "en", "de", moved, tmp_path / "c.sqlite", progress=False, stats=st)
    assert again == first and (st.requests, st.cache_hits, st.translated) == (0, 2, 0)


def test_seq2seq_key_names_runtime_and_precision(tiny_m2m, clo_cache):
    import ctranslate2  # noqa: F401  (dev extra: a missing one is a failure, not a skip)

    def fp(**kw):
        return T.make_translator(TranslatorConfig(kind="seq2seq", model=str(tiny_m2m), device="cpu", **kw)).fingerprint()

    auto = fp()
    assert auto == f"seq2seq/v1|model={tiny_m2m}|decode=greedy|new=2.0x+16|backend=ctranslate2|compute=int8"
    assert fp(dtype="int8") == auto  # auto is int8 on a CPU: the same translations, the same key
    assert fp(dtype="float32").endswith("backend=ctranslate2|compute=float32")
    assert fp(backend="transformers").endswith("backend=transformers|compute=float32")
    # Operational settings are not in it.
    assert fp(batch_tokens=128, batch_size=4, max_segment_tokens=50) == auto
    assert fp(tokenizer=str(tiny_m2m)) == auto.replace("|backend", f"|tokenizer={tiny_m2m}|backend")


def test_causal_key_names_its_precision(tmp_path):
    from clo.testing import tiny_model, tiny_tokenizer

    tiny_model("llama", vocab_size=512).save_pretrained(tmp_path)
    tiny_tokenizer(chat_template=False).save_pretrained(tmp_path)
    tr = T.make_translator(TranslatorConfig(kind="causal", model=str(tmp_path), device="cpu"))
    assert tr.fingerprint() == (f"causal/v1|model={tmp_path}|decode=greedy|new=2.0x+16|dtype=float32|"
                                "stop=newline+nonempty+loop|prefix=cached")
    bf16 = T.make_translator(TranslatorConfig(kind="causal", model=str(tmp_path), device="cpu", dtype="bfloat16"))
    assert "|dtype=bfloat16|" in bf16.fingerprint()


# --- CTranslate2: compute type, converted directories ------------------------------------------------


def test_compute_type_follows_the_device(monkeypatch):
    import ctranslate2  # noqa: F401  (dev extra: a missing one is a failure, not a skip)
    assert ct2.compute_type("auto", "cpu") == "int8"
    assert ct2.compute_type("float32", "cpu") == "float32"
    with pytest.raises(T.TranslationError, match="cannot compute in float16 on cpu"):
        ct2.compute_type("float16", "cpu")
    with pytest.raises(T.TranslationError, match="unknown dtype 'fp8'"):
        ct2.compute_type("fp8", "cpu")
    # A GPU (its capabilities as CTranslate2 reports them for an H200 and for a GPU without fp16).
    gpu = {"float32", "float16", "bfloat16", "int8", "int8_float32", "int8_float16", "int8_bfloat16"}
    monkeypatch.setattr(ct2, "supported_compute_types", lambda device: gpu if device.startswith("cuda") else {"int8"})
    assert ct2.compute_type("auto", "cuda") == "float16"
    assert ct2.compute_type("auto", "cuda:1") == "float16"
    assert ct2.compute_type("int8_float16", "cuda") == "int8_float16"
    monkeypatch.setattr(ct2, "supported_compute_types", lambda device: {"float32", "int8", "int8_float32"})
    assert ct2.compute_type("auto", "cuda") == "float32"


def test_auto_dtype_loads_int8_on_a_cpu(tiny_m2m, clo_cache):
    import ctranslate2  # noqa: F401  (dev extra: a missing one is a failure, not a skip)
    model = ct2.load_ctranslate2(str(tiny_m2m), "cpu")  # what the translator and the bench load
    assert model.compute_type == "int8_float32"  # CTranslate2's name for int8 weights of a float32 model
    assert ct2.load_ctranslate2(str(tiny_m2m), "cpu", "float32").compute_type == "float32"
    assert len(list((clo_cache / "ct2").glob("*/model.bin"))) == 1  # converted once, whatever the compute type


def _converted(src, out, copy_tokenizer: bool):
    import ctranslate2

    files = ["tokenizer_config.json", "sentencepiece.bpe.model", "vocab.json", "added_tokens.json"]
    ctranslate2.converters.TransformersConverter(str(src), copy_files=files if copy_tokenizer else None).convert(
        str(out), force=True)
    return out


def test_a_converted_directory_is_used_as_it_is(tiny_m2m, tmp_path, clo_cache):
    import ctranslate2  # noqa: F401  (dev extra: a missing one is a failure, not a skip)
    texts = ["Hello world.", "Write a short poem about the sea."]
    ref_cfg = TranslatorConfig(kind="seq2seq", model=str(tiny_m2m), device="cpu", dtype="float32",
                               max_new_tokens_extra=4)
    ref = T.translate_texts(texts, "en", "de", ref_cfg, tmp_path / "ref.sqlite", progress=False)
    shutil.rmtree(clo_cache, ignore_errors=True)

    # With its tokenizer files copied (ct2-transformers-converter --copy_files ...).
    with_tok = _converted(tiny_m2m, tmp_path / "ct2-tok", copy_tokenizer=True)
    assert ct2.is_ct2_model_dir(with_tok) and not ct2.is_ct2_model_dir(tiny_m2m)
    cfg = ref_cfg.model_copy(update={"model": str(with_tok)})
    assert T.translate_texts(texts, "en", "de", cfg, tmp_path / "a.sqlite", progress=False) == ref
    assert not (clo_cache / "ct2").exists()  # not converted again

    # Without: the tokenizer comes from data.translator.tokenizer, and it says so when it is missing.
    bare = _converted(tiny_m2m, tmp_path / "ct2-bare", copy_tokenizer=False)
    with pytest.raises(T.TranslationError, match="without tokenizer files: set data.translator.tokenizer"):
        T.make_translator(ref_cfg.model_copy(update={"model": str(bare)}))
    cfg = ref_cfg.model_copy(update={"model": str(bare), "tokenizer": str(tiny_m2m)})
    assert T.translate_texts(texts, "en", "de", cfg, tmp_path / "b.sqlite", progress=False) == ref
    with pytest.raises(T.TranslationError, match="runs on backend ctranslate2 only"):
        T.make_translator(cfg.model_copy(update={"backend": "transformers"}))
    # Its weights are the directory's model.bin (the batch budget's estimate).
    tr = T.make_translator(cfg)
    assert tr.memory_model().weight_bytes == (bare / "model.bin").stat().st_size


# --- the batch budget ------------------------------------------------------------------------------


def test_budget_from_memory_exact():
    m = base.MemoryModel(weight_bytes=3 * GIB, bytes_per_token=256 * 1024)
    # (40 - 3 - 4 reserve) GiB / (2 * 256 KiB) = 67,584 tokens -> 65,536; capped by batch_size x max tokens.
    assert base.budget_from_memory(40 * GIB, 40 * GIB, m, cap=128 * 1024, loaded=False) == 65536
    assert base.budget_from_memory(40 * GIB, 40 * GIB, m, cap=128 * 200, loaded=False) == 32768
    # Loaded weights are already out of the free memory.
    assert base.budget_from_memory(8 * GIB, 40 * GIB, m, cap=1 << 20, loaded=True) == 8192  # 4 GiB / 512 KiB
    assert base.budget_from_memory(8 * GIB, 40 * GIB, m, cap=1 << 20, loaded=False) == 2048  # 1 GiB / 512 KiB
    # No room: the minimum, with a warning (the run may still fit; it says why it is slow).
    assert base.budget_from_memory(2 * GIB, 40 * GIB, m, cap=1 << 20, loaded=False) == base.MIN_BATCH_TOKENS


def test_budget_is_fixed_on_a_cpu_and_a_number_overrides(tiny_m2m, clo_cache):
    tr = T.make_translator(TranslatorConfig(kind="seq2seq", model=str(tiny_m2m), backend="transformers", device="cpu"))
    assert tr.batch_tokens() == base.DEFAULT_BATCH_TOKENS == 4096
    tr = T.make_translator(TranslatorConfig(kind="seq2seq", model=str(tiny_m2m), device="cpu", batch_tokens=300))
    assert tr.batch_tokens() == 300
    assert T.make_translator(TranslatorConfig(kind="identity")).batch_tokens() == 4096


def _on_gpu(monkeypatch, tr, free_gib: float, total_gib: float = 139.8):
    """Make ``tr`` believe it runs on a GPU with this much free memory."""
    calls = []

    def mem(device):
        calls.append(device)
        return int(free_gib * GIB), int(total_gib * GIB)

    monkeypatch.setattr(base, "cuda_memory", mem)
    tr.device = "cuda"
    tr.compute = "float16"
    tr._batch_tokens = None
    return calls


def test_gpu_budget_from_free_memory_and_the_model(tiny_m2m, clo_cache, monkeypatch):
    tr = T.make_translator(TranslatorConfig(kind="seq2seq", model=str(tiny_m2m), backend="transformers", device="cpu"))
    monkeypatch.setattr(tr, "_shapes", lambda: dict(M2M100_12B))
    calls = _on_gpu(monkeypatch, tr, free_gib=139.0)
    m = tr.memory_model()
    assert 2.3e9 < m.weight_bytes < 2.6e9  # 1.24 B parameters in float16
    assert 300 * 1024 < m.bytes_per_token < 700 * 1024
    # An H200: memory is no limit, batch_size x max_segment_tokens is (128 x 200 -> 32,768).
    assert tr.batch_tokens() == 32768 and calls == ["cuda"]
    assert tr.batch_tokens() == 32768 and calls == ["cuda"]  # decided once per translator
    # A GPU with 12 GiB free of 24: (12 - 2.4 - 2.4) GiB / ~1 MiB = ~7.6k tokens -> 4,096.
    _on_gpu(monkeypatch, tr, free_gib=12.0, total_gib=24.0)
    n = tr.batch_tokens()
    assert n == 4096
    _on_gpu(monkeypatch, tr, free_gib=6.0, total_gib=24.0)
    assert tr.batch_tokens() < n
    # A larger batch_size lifts the cap, and memory is the limit: (139 - 2.4 weights - 14 reserve)
    # GiB / (2 x ~500 KiB per token) = ~129k tokens -> 65,536.
    big = T.make_translator(TranslatorConfig(kind="seq2seq", model=str(tiny_m2m), backend="transformers",
                                             device="cpu", batch_size=1024))
    monkeypatch.setattr(big, "_shapes", lambda: dict(M2M100_12B))
    _on_gpu(monkeypatch, big, free_gib=139.0)
    assert big.batch_tokens() == 65536
    # A number in the config wins over everything.
    fixed = T.make_translator(TranslatorConfig(kind="seq2seq", model=str(tiny_m2m), backend="transformers",
                                               device="cpu", batch_tokens=4096))
    gpu = _on_gpu(monkeypatch, fixed, free_gib=139.0)
    assert fixed.batch_tokens() == 4096 and gpu == []


def test_gpu_budget_of_the_causal_translator(tmp_path, monkeypatch):
    from clo.testing import tiny_model, tiny_tokenizer

    tiny_model("llama", vocab_size=512).save_pretrained(tmp_path)
    tiny_tokenizer(chat_template=False).save_pretrained(tmp_path)
    tr = T.make_translator(TranslatorConfig(kind="causal", model=str(tmp_path), device="cpu"))
    assert tr.batch_tokens() == 4096
    _on_gpu(monkeypatch, tr, free_gib=1.5, total_gib=8.0)
    m = tr.memory_model()
    assert 0 < m.weight_bytes < 10 * 1024 * 1024 and m.bytes_per_token > 0
    assert tr.batch_tokens() == 32768  # a tiny model: the cap, as on any GPU with room


def test_translate_all_reports_the_budget_it_used(tmp_path):
    st = T.TranslationStats()
    T.translate_all(["Hello world, how are you?"], "en", "de", TranslatorConfig(kind="identity"),
                    tmp_path / "c.sqlite", progress=False, stats=st)
    assert st.batch_tokens == 4096 and st.to_dict()["batch_tokens"] == 4096
    st = T.TranslationStats()
    T.translate_all(["Hello world, how are you?"], "en", "de", TranslatorConfig(kind="identity"),
                    tmp_path / "c.sqlite", progress=False, stats=st)
    assert st.batch_tokens == 0 and st.cache_hits == 1  # all cached: no budget needed


# --- AlpacaEval: translate only the instructions used ---------------------------------------------


def test_translate_instructions_takes_the_limit(tmp_path, shared_data):
    from clo.config import config_from_dict
    from clo.experiments.grid import translate_instructions

    cfg = config_from_dict({"lang": "de", "data": {"translator": {"kind": "identity"}},
                            "eval": {"data_dir": str(shared_data), "limit": 4}})
    out = translate_instructions(cfg, "de", tmp_path / "instructions_de.json")
    rows = json.loads((tmp_path / "instructions_de.json").read_text(encoding="utf-8"))
    english = json.loads((shared_data / "alpaca_eval" / "text_davinci_003.json").read_text(encoding="utf-8"))
    assert out["n"] == len(rows) == 4
    assert [r["instruction_en"] for r in rows] == [e["instruction"] for e in english[:4]]
    import sqlite3

    with sqlite3.connect(tmp_path / "instructions_de.sqlite") as c:
        n_cached = c.execute("SELECT COUNT(*) FROM translations").fetchone()[0]
    assert 0 < n_cached < 40  # the segments of 4 instructions, not the 1,395 of all 805


def test_grid_translates_the_largest_limit_its_jobs_use(tmp_path):
    from clo.experiments.config import expand, grid_from_dict
    from clo.experiments.graph import _instructions_limit

    def limit(jobs, base_limit=None):
        tree = {"name": "t", "output_dir": str(tmp_path / "g"), "models": ["org/Tiny-1"], "langs": ["de"],
                "methods": ["sft", "clo"], "sizes": [200], "eval_jobs": jobs,
                "base": {"eval": {"tasks": ["belebele"], "limit": base_limit}}}
        grid = grid_from_dict(tree)
        pairwise = [j for j in grid.jobs() if j.task == "alpacaeval"]
        return _instructions_limit(grid, pairwise, expand(grid), ("de", None))

    assert limit([{"task": "alpacaeval", "opts": {"limit": 4}}]) == 4
    assert limit([{"task": "alpacaeval", "opts": {"limit": 4}}, {"task": "alpacaeval", "opts": {"limit": 9}}]) == 9
    assert limit([{"task": "alpacaeval"}], base_limit=6) == 6  # the runs' eval.limit
    assert limit([{"task": "alpacaeval", "opts": {"limit": 4}}, {"task": "alpacaeval"}]) is None  # one uses all
    # A job with its own translated file or another language needs none of these.
    assert limit([{"task": "alpacaeval", "opts": {"limit": 4}},
                  {"task": "alpacaeval", "opts": {"translated_file": "x.json"}},
                  {"task": "alpacaeval", "lang": "en"}]) == 4
