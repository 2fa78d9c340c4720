import json
import sqlite3
import threading
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clo.data import translators as T
from clo.data.cache import CacheError, TranslationCache, set_aside
from clo.data.config import TranslatorConfig
from clo.data.translators import seq2seq


def test_plan_batches_sorted_and_budgeted():
    lengths = {"a": 5, "bb": 1, "c": 3, "d": 3, "e": 10, "f": 2}
    # sorted: bb(1) f(2) c(3) d(3) a(5) e(10); budget 6 padded tokens, at most 3 a batch.
    assert T.plan_batches(lengths, batch_tokens=6, batch_size=3) == [["bb", "f"], ["c", "d"], ["a"], ["e"]]
    assert T.plan_batches(lengths, batch_tokens=100, batch_size=4) == [["bb", "f", "c", "d"], ["a", "e"]]
    assert T.plan_batches({}, 10, 10) == []


def test_cache_persists_and_is_keyed(tmp_path):
    p = tmp_path / "c.sqlite"
    with TranslationCache(p) as c:
        c.put_many("tr1", "en", "de", {"Hello": "Hallo", "Bye": "Tschüss"})
        c.put_many("tr2", "en", "de", {"Hello": "Servus"})
    with TranslationCache(p) as c:
        assert c.get_many("tr1", "en", "de", ["Hello", "Bye", "New"]) == {"Hello": "Hallo", "Bye": "Tschüss"}
        assert c.get_many("tr2", "en", "de", ["Hello", "Bye"]) == {"Hello": "Servus"}
        assert c.get_many("tr1", "en", "fr", ["Hello"]) == {}
        assert len(c) == 3
    (tmp_path / "bad.sqlite").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ValueError, match="not a usable translation cache"):
        TranslationCache(tmp_path / "bad.sqlite")


def _full_cache(path, n=2000):
    with TranslationCache(path) as c:
        c.put_many("tr", "en", "de", {f"source sentence number {i} " * 5: f"Satz {i} " * 5 for i in range(n)})
    with sqlite3.connect(path) as con:  # everything into the main file, so that its pages can be damaged
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def test_damaged_cache_is_refused_with_the_way_out(tmp_path):
    p = tmp_path / "c.sqlite"
    _full_cache(p)
    data = bytearray(p.read_bytes())
    data[5 * 4096:6 * 4096] = b"\xab" * 4096  # one page of garbage in the middle of the B-tree
    p.write_bytes(bytes(data))
    with pytest.raises(CacheError) as e:
        TranslationCache(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: not a usable translation cache (SQLite") and "malformed" in msg
    assert "--rebuild-cache" in msg and "\n" not in msg
    aside = set_aside(p)
    assert not p.exists() and aside.name.startswith("c.sqlite.broken-") and aside.read_bytes() == bytes(data)
    with TranslationCache(p) as c:
        assert len(c) == 0
    assert set_aside(tmp_path / "missing.sqlite") is None


def test_wrong_schema_and_foreign_database_are_refused(tmp_path):
    with sqlite3.connect(tmp_path / "old.sqlite") as c:
        c.execute("CREATE TABLE translations (source TEXT, target TEXT)")
    with pytest.raises(CacheError, match=r"columns \['source', 'target'\], expected \['translator'"):
        TranslationCache(tmp_path / "old.sqlite")
    with sqlite3.connect(tmp_path / "other.sqlite") as c:
        c.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(CacheError, match=r"an SQLite database of something else, with tables \['users'\]"):
        TranslationCache(tmp_path / "other.sqlite")
    with sqlite3.connect(tmp_path / "other.sqlite") as c:  # and it was left alone
        assert [r[0] for r in c.execute("SELECT name FROM sqlite_master")] == ["users"]


def test_zero_byte_cache_is_a_new_cache_and_says_so(tmp_path, caplog):
    p = tmp_path / "c.sqlite"
    p.write_bytes(b"")
    with caplog.at_level("WARNING", logger="clo.data.cache"), TranslationCache(p) as c:
        c.put_many("tr", "en", "de", {"Hello": "Hallo"})
    assert "is empty (0 bytes): starting a new translation cache" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="clo.data.cache"), TranslationCache(p) as c:
        assert c.get_many("tr", "en", "de", ["Hello"]) == {"Hello": "Hallo"}
    assert "0 bytes" not in caplog.text


class Recorder(T.Translator):
    """Upper-cases, with '@' + target code: easy to predict; records every batch it gets."""

    kind = "recorder"
    batches: typing.ClassVar[list] = []  # reset by the fixture; class-level so the registry can build instances

    def count_tokens(self, text):
        return len(text.split())

    def translate_batch(self, texts, src_lang, tgt_lang):
        Recorder.batches.append(list(texts))
        return [f"{t.upper()}@{tgt_lang}" for t in texts]


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.setitem(T.TRANSLATORS, "recorder", Recorder)
    Recorder.batches = []
    return TranslatorConfig(kind="recorder", batch_tokens=6, batch_size=8)


def test_translate_texts_dedups_batches_and_caches(recorder, tmp_path):
    texts = ["Hello there.", "- Hello there.\n- Good night, my friend.", "`x = 1` Hello there.", ""]
    st = T.TranslationStats()
    out = T.translate_texts(texts, "en", "de", recorder, tmp_path / "c.sqlite", progress=False, stats=st)
    assert out == ["HELLO THERE.@de", "- HELLO THERE.@de\n- GOOD NIGHT, MY FRIEND.@de", "`x = 1` HELLO THERE.@de", ""]
    # "Hello there." occurs 3 times and is translated once; batches sorted by length, 6-token budget.
    assert Recorder.batches == [["Hello there."], ["Good night, my friend."]]
    assert (st.segments, st.unique_segments, st.translated, st.cache_hits) == (4, 2, 2, 0)
    st2 = T.TranslationStats()
    out2 = T.translate_texts(texts + ["Hello there. Welcome!"], "en", "de", recorder, tmp_path / "c.sqlite",
                             progress=False, stats=st2)
    assert out2[:4] == out and out2[4] == "HELLO THERE. WELCOME!@de"
    assert Recorder.batches[2:] == [["Hello there. Welcome!"]]
    assert (st2.cache_hits, st2.translated) == (2, 1)


class Flaky(Recorder):
    """Like Recorder, but returns "" for segments with EMPTY and the segment itself for ECHO."""

    kind = "flaky"

    def translate_batch(self, texts, src_lang, tgt_lang):
        out = super().translate_batch(texts, src_lang, tgt_lang)
        return ["" if "EMPTY" in t else t if "ECHO" in t else o for t, o in zip(texts, out)]


def test_failed_segments_fail_their_text_and_are_not_cached(monkeypatch, tmp_path):
    monkeypatch.setitem(T.TRANSLATORS, "flaky", Flaky)
    Recorder.batches = []
    cfg = TranslatorConfig(kind="flaky", batch_tokens=100, batch_size=8)
    texts = ["- Good morning.\n- Now ECHO this line please.", "EMPTY answer here.", "Good morning.", "Sure."]
    st = T.TranslationStats()
    out = T.translate_all(texts, "en", "de", cfg, tmp_path / "c.sqlite", progress=False, stats=st)
    # One bad segment spoils its text only: the other texts keep their translation.
    assert [r.text for r in out] == [None, None, "GOOD MORNING.@de", "SURE.@de"]
    assert out[0].failures == {"Now ECHO this line please.": T.SegmentFailure("echo", "flaky returned the segment unchanged")}
    assert out[1].failures == {"EMPTY answer here.": T.SegmentFailure("empty", "flaky returned an empty translation")}
    assert (st.translated, st.failed, st.failures) == (2, 2, {"echo": 1, "empty": 1})
    with TranslationCache(tmp_path / "c.sqlite") as c:
        assert c.get_many(Flaky(cfg).fingerprint(), "en", "de", ["Good morning.", "Sure.", "EMPTY answer here.",
                                                "Now ECHO this line please."]) == {
            "Good morning.": "GOOD MORNING.@de", "Sure.": "SURE.@de"}
    with pytest.raises(T.TranslationError, match=r"2 segment\(s\) have no usable translation"):
        T.translate_texts(texts, "en", "de", cfg, tmp_path / "c.sqlite", progress=False)
    assert Recorder.batches[-1] == ["EMPTY answer here.", "Now ECHO this line please."]  # only those again


def test_identity_translator_may_echo(tmp_path):
    st = T.TranslationStats()
    out = T.translate_texts(["Hello world, how are you?"], "en", "de", TranslatorConfig(kind="identity"),
                            tmp_path / "c.sqlite", progress=False, stats=st)
    assert out == ["Hello world, how are you?"] and st.failed == 0


def test_translate_texts_rejects_bad_input(recorder, tmp_path):
    with pytest.raises(KeyError, match="unknown language code 'xx'"):
        T.translate_texts(["a"], "en", "xx", recorder, tmp_path / "c.sqlite")
    with pytest.raises(TypeError, match="list of str"):
        T.translate_texts("not a list", "en", "de", recorder, tmp_path / "c.sqlite")


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ValueError, match="unknown translator kind 'nope'"):
        TranslatorConfig(kind="nope")


def test_few_shot_prompt_exact():
    assert T.few_shot_prompt("Good luck!", "en", "de", shots=1) == (
        "Translate English to German.\n\nEnglish: How do I make a good cup of tea?\n"
        "German: Wie mache ich eine gute Tasse Tee?\n\nEnglish: Good luck!\nGerman:")
    with pytest.raises(T.TranslationError, match="no few-shot examples for 'fr'"):
        T.few_shot_prompt("x", "en", "fr")


# --- seq2seq on a tiny random M2M100 with a real M2M100Tokenizer --------------------------------


@pytest.fixture(scope="module")
def tiny_m2m(tmp_path_factory):
    from clo.data.testing import tiny_m2m100

    return tiny_m2m100(tmp_path_factory.mktemp("m2m"))


def test_seq2seq_forces_target_language_token(tiny_m2m):
    tr = T.make_translator(TranslatorConfig(kind="seq2seq", model=str(tiny_m2m), backend="transformers", device="cpu"))
    tok = tr.tokenizer
    ids = tr.generate_ids(["Hello world.", "The quick brown fox jumps."], "en", "de")
    assert ids[:, 0].tolist() == [2, 2]  # decoder start token </s>
    assert ids[:, 1].tolist() == [tok.lang_token_to_id["__de__"]] * 2
    ids = tr.generate_ids(["Hello world."], "de", "ko")
    assert ids[0, 1].item() == tok.lang_token_to_id["__ko__"]
    assert tok.src_lang == "de"  # the source language token leads the encoder input
    assert tok("Hallo").input_ids[0] == tok.lang_token_to_id["__de__"]
    # Generation is bounded by the source length: ratio 2 * tokens + 16 extra, after the decoder
    # start and the language token.
    assert tr.max_new_tokens(tr.count_tokens("Hello world.")) == 2 * tr.count_tokens("Hello world.") + 16
    assert ids.shape[1] <= 2 + tr.max_new_tokens(tr.count_tokens("Hello world."))


def test_seq2seq_ctranslate2_matches_transformers(tiny_m2m, tmp_path, monkeypatch):
    pytest.importorskip("ctranslate2", reason="ctranslate2 is in the dev extra; install it")
    monkeypatch.setenv("CLO_CACHE", str(tmp_path / "clo-cache"))
    texts = ["Hello world.", "Write a short poem about the sea.", "Der schnelle braune Fuchs."]
    outs = {}
    for backend in ("transformers", "ctranslate2"):
        # float32 on both: CTranslate2's CPU default (dtype auto) is int8, which changes some tokens.
        cfg = TranslatorConfig(kind="seq2seq", model=str(tiny_m2m), backend=backend, device="cpu",
                               max_new_tokens_extra=4, dtype="float32")
        outs[backend] = T.translate_texts(texts, "en", "de", cfg, tmp_path / f"{backend}.sqlite", progress=False)
    assert outs["ctranslate2"] == outs["transformers"]
    assert list((tmp_path / "clo-cache" / "ct2").glob("*/model.bin")), "converted model is cached"


def test_auto_backend_prefers_ctranslate2(tiny_m2m):
    pytest.importorskip("ctranslate2", reason="ctranslate2 is in the dev extra; install it")
    tr = T.make_translator(TranslatorConfig(kind="seq2seq", model=str(tiny_m2m), device="cpu"))
    assert tr.backend == "ctranslate2"


def test_seq2seq_rejects_non_translation_tokenizer(tmp_path):
    from clo.testing import tiny_tokenizer

    with pytest.raises(T.TranslationError, match="no language token for 'de'"):
        seq2seq._lang_token(tiny_tokenizer(), "de")


def test_loop_detection_exact():
    import torch

    rows = torch.tensor([
        [7, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4],  # "1 2 3 4" three times: a loop
        [7, 1, 2, 3, 4, 1, 2, 3, 4, 9, 2, 3, 4],  # last 4-gram "9 2 3 4" once
        [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5],  # "5 5 5 5" ten times
    ])
    assert T.loop_detected(rows).tolist() == [True, False, True]
    assert T.loop_detected(rows[:, :12]).tolist() == [False, False, True]  # row 0 ends "4 1 2 3": twice only
    assert T.loop_detected(rows[:, :11]).tolist() == [False, False, False]  # shorter than n * times = 12


# --- causal on a tiny random Llama ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory):
    from clo.testing import tiny_model, tiny_tokenizer

    d = tmp_path_factory.mktemp("causal")
    tiny_model("llama", vocab_size=512).save_pretrained(d)
    tiny_tokenizer(chat_template=False).save_pretrained(d)
    return d


def test_causal_translator_batches_like_single_calls(tiny_causal):
    texts = ["Hello world.", "The quick brown fox jumps over the lazy dog."]
    results = {}
    for prefix_cache in (False, True):
        cfg = TranslatorConfig(kind="causal", model=str(tiny_causal), device="cpu", max_new_tokens_ratio=1.0,
                               max_new_tokens_extra=3, prefix_cache=prefix_cache)
        tr = T.make_translator(cfg)
        together = tr.translate_batch(texts, "en", "de")
        alone = [tr.translate_batch([t], "en", "de")[0] for t in texts]
        assert together == alone  # padding (left, or between prefix and segment) changes nothing
        results[prefix_cache] = together
    # The shared few-shot prefix cache gives the translations of the full prompt.
    assert results[True] == results[False]
    assert all("\n" not in t for t in together)
    nl = [i for t, i in tr.tokenizer.get_vocab().items() if "Ċ" in t]
    assert nl and set(nl) <= set(tr.stop_token_ids())
    assert tr.tokenizer.eos_token_id in tr.stop_token_ids()
    # The random model loops ("ick...ick..."): generation stops at the third repeat, before the bound.
    assert any(len(tr.tokenizer(o, add_special_tokens=False).input_ids) < tr.max_new_tokens(tr.count_tokens(t))
               for t, o in zip(texts, together))
    # Output bounded by ratio * source tokens + extra.
    for t, o in zip(texts, together):
        assert len(tr.tokenizer(o, add_special_tokens=False).input_ids) <= tr.max_new_tokens(tr.count_tokens(t)) + 1


# --- openai-compatible endpoint, served locally ---------------------------------------------------


class _Server:
    """Answers 429, then 500, then the translation; counts requests and concurrency."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][-1]["content"]
                assert self.headers["Authorization"] == "Bearer test-key"
                with server.lock:
                    n = server.calls[text] = server.calls.get(text, 0) + 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    import time

                    time.sleep(0.05)
                    if n == 1:
                        return self._send(429, {"error": {"message": "rate limited"}}, {"retry-after-ms": "10"})
                    if n == 2:
                        return self._send(500, {"error": {"message": "boom"}}, {"retry-after-ms": "10"})
                    self._send(200, {
                        "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": f" DE[{text}] "}}],
                    })
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, code, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_openai_translator_retries_and_limits_concurrency(tmp_path, monkeypatch):
    server = _Server()
    monkeypatch.setenv("CLO_TEST_KEY", "test-key")
    cfg = TranslatorConfig(kind="openai", model="some-model", base_url=server.url, api_key_env="CLO_TEST_KEY",
                           concurrency=2, max_retries=3, timeout=10)
    texts = ["One.", "Two.", "Three.", "Four.", "Five."]
    try:
        st = T.TranslationStats()
        out = T.translate_texts(texts, "en", "de", cfg, tmp_path / "c.sqlite", progress=False, stats=st)
    finally:
        server.httpd.shutdown()
    assert out == [f"DE[{t}]" for t in texts]
    assert server.calls == {t: 3 for t in texts}  # 429, 500, then success
    assert server.max_in_flight == 2
    assert (st.requests, st.retries, st.failed) == (15, 10, 0)


def test_openai_translator_needs_its_key(monkeypatch):
    monkeypatch.delenv("CLO_MISSING_KEY", raising=False)
    with pytest.raises(T.TranslationError, match=r"\$CLO_MISSING_KEY, which is not set"):
        T.make_translator(TranslatorConfig(kind="openai", api_key_env="CLO_MISSING_KEY"))


def test_seq2seq_nllb_language_codes(tmp_path):
    """NLLB-200 names languages by FLORES code (deu_Latn) and runs on the M2M100 architecture."""
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "▁": 4, ".": 5}
    for ch in "abcdefghijklmnopqrstuvwxyzHW":
        vocab.setdefault(ch, len(vocab))
    tok = NllbTokenizer(vocab=vocab, merges=[], src_lang="eng_Latn", tgt_lang="deu_Latn")
    torch.manual_seed(0)
    cfg = M2M100Config(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=128,
                       pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    M2M100ForConditionalGeneration(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    tr = T.make_translator(TranslatorConfig(kind="seq2seq", model=str(tmp_path), backend="transformers", device="cpu",
                                            max_new_tokens_extra=2))
    ids = tr.generate_ids(["Hello world."], "en", "sw")
    assert ids[0, 1].item() == tr.tokenizer.convert_tokens_to_ids("swh_Latn")
    assert tr.tokenizer("Hello").input_ids[0] == tr.tokenizer.convert_tokens_to_ids("eng_Latn")
    assert seq2seq._lang_token(tr.tokenizer, "zh") == "zho_Hans"


@pytest.mark.slow
def test_gemma_few_shot_translates_into_german(tmp_path):
    """The offline default (Gemma 3 270M, few-shot) turns simple sentences into German."""
    from clo.langid import detect_languages

    texts = ["He installed the software.", "Jupiter is a planet.", "The children are playing in the garden."]
    cfg = TranslatorConfig(kind="causal", model="gemma-3-270m", device="cpu", batch_size=4)
    st = T.TranslationStats()
    out = T.translate_texts(texts, "en", "de", cfg, tmp_path / "c.sqlite", progress=False, stats=st)
    assert detect_languages(out) == ["de", "de", "de"], out
    assert st.translated == 3 and all(o and "\n" not in o for o in out)
