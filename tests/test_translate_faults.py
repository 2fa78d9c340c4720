"""Fault injection: the openai translator against a local endpoint that misbehaves on purpose.

Every fault mode of :class:`clo.data.testing.FakeChatServer` (429, 500, timeout, malformed JSON,
HTML, empty, null, echo), transient and persistent, per segment and through a whole build. The
server binds 127.0.0.1; timeouts, retries and backoff are shrunk so the suite runs in seconds.
"""

import email.utils
import json
import sqlite3
import time

import pytest

from clo.config import config_from_dict
from clo.data import translators as T
from clo.data.build import BuildError, build_dataset
from clo.data.checks import has_words_to_translate, segment_failure
from clo.data.config import TranslatorConfig
from clo.data.records import read_records
from clo.data.testing import FakeChatServer, fake_german

FAULTS = ("429", "500", "timeout", "malformed", "html", "empty", "null", "echo")
# What a segment that keeps getting a fault fails with.
KIND = {"429": "error", "500": "error", "timeout": "error", "malformed": "error", "html": "error",
        "empty": "empty", "null": "empty", "echo": "echo"}
# Faults whose answer is a JSON chat completion: the server bills its usage.
BILLED = {"empty", "null", "echo", "ok"}
# Client timeout; the server hangs for 2 * TIMEOUT on "timeout". Long enough that a good answer
# from a loaded machine never times out.
TIMEOUT = 1.0


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setenv("CLO_FAKE_KEY", "test-key")
    monkeypatch.setattr(T.OpenAITranslator, "INITIAL_BACKOFF", 0.01)
    monkeypatch.setattr(T.OpenAITranslator, "MAX_BACKOFF", 0.05)


def _cfg(server, **kw) -> TranslatorConfig:
    opts = {"kind": "openai", "model": "fake-model", "base_url": server.url, "api_key_env": "CLO_FAKE_KEY",
            "max_retries": 2, "timeout": TIMEOUT, "concurrency": 4}
    return TranslatorConfig(**{**opts, **kw})


def _sentence(name) -> str:
    return f"The segment called {name} is about a dog."


def _cached(path) -> dict[str, str]:
    with sqlite3.connect(path) as c:
        return dict(c.execute("SELECT source, target FROM translations").fetchall())


# --- the segment rules --------------------------------------------------------------------------


def test_segment_failure_rules():
    assert segment_failure("Hello world.", "") == "empty"
    assert segment_failure("Hello world.", "  \n ") == "empty"
    assert segment_failure("Hello world.", "Hello world.") == "echo"
    assert segment_failure("Hello world.", " hello   WORLD. ") == "echo"  # whitespace and case do not hide it
    assert segment_failure("Hello world.", "Hallo Welt.") is None
    assert segment_failure("Hello world.", "Hello world.", echo=False) is None  # identity translator
    # Names, titles, acronyms and single words may come back unchanged.
    for same in ("Albert Einstein", "Paris.", "NASA", "pizza", "New York City", "iPhone 15 Pro"):
        assert not has_words_to_translate(same), same
        assert segment_failure(same, same) is None
    # Caseless scripts: two letters are words.
    assert has_words_to_translate("你好") and segment_failure("你好", "你好") == "echo"
    assert has_words_to_translate("Write a poem") and has_words_to_translate("The dog is here.")


def test_retry_after_parsing():
    assert T.retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert T.retry_after_seconds({"retry-after": "2"}) == 2.0
    assert T.retry_after_seconds({"retry-after": "0.4"}) == 0.4
    assert T.retry_after_seconds({"retry-after-ms": "100", "retry-after": "9"}) == 0.1
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= T.retry_after_seconds({"retry-after": later}) <= 30
    assert T.retry_after_seconds({"retry-after": "soon"}) is None
    assert T.retry_after_seconds({}) is None and T.retry_after_seconds(None) is None


# --- one fault per segment ----------------------------------------------------------------------


def test_transient_faults_are_retried_and_recovered(tmp_path):
    """Each fault once, then a good answer: everything is translated, nothing fails."""
    faulty = {_sentence(f): [f] for f in FAULTS}
    clean = [_sentence(f"clean {i}") for i in range(4)]
    texts = list(faulty) + clean
    st = T.TranslationStats()
    with FakeChatServer(faulty, hang=2 * TIMEOUT) as server:
        out = T.translate_all(texts, "en", "de", _cfg(server), tmp_path / "c.sqlite", progress=False, stats=st)
        for t in faulty:
            assert server.requests_for(t) == [faulty[t][0], "ok"], t
        for t in clean:
            assert server.requests_for(t) == ["ok"]
    assert [r.text for r in out] == [fake_german(t) for t in texts]
    assert all(not r.failures for r in out)
    assert (st.translated, st.failed, st.failures) == (12, 0, {})
    assert (st.requests, st.retries) == (2 * 8 + 4, 8)
    billed = 12 + sum(f in BILLED for f in FAULTS)  # every good answer, and the empty, null, echo ones
    assert st.usage == {k: billed * v for k, v in FakeChatServer.USAGE.items()}
    assert _cached(tmp_path / "c.sqlite") == {t: fake_german(t) for t in texts}


def test_persistent_faults_fail_the_segment_and_are_not_cached(tmp_path):
    """Each fault on every attempt: 1 + max_retries requests, then the segment fails; a rerun
    against the fixed server asks for exactly the failed segments."""
    faulty = {_sentence(f): f for f in FAULTS}
    clean = [_sentence(f"clean {i}") for i in range(3)]
    texts = list(faulty) + clean
    cache = tmp_path / "c.sqlite"
    st = T.TranslationStats()
    with FakeChatServer(faulty, hang=2 * TIMEOUT) as server:
        t0 = time.monotonic()
        out = T.translate_all(texts, "en", "de", _cfg(server), cache, progress=False, stats=st)
        assert time.monotonic() - t0 < 15, "bounded: 3 attempts of at most the timeout each"
        for t, f in faulty.items():
            assert server.requests_for(t) == [f] * 3, t
        for r, (t, f) in zip(out, faulty.items()):
            assert r.text is None and list(r.failures) == [t]
            failure = r.failures[t]
            assert failure.kind == KIND[f], f
            assert failure.detail.startswith(server.url) and failure.detail.endswith("(after 3 requests)")
        assert [r.text for r in out[len(faulty):]] == [fake_german(t) for t in clean]
        assert (st.translated, st.failed) == (3, 8)
        assert st.failures == {"echo": 1, "empty": 2, "error": 5}
        assert (st.requests, st.retries) == (8 * 3 + 3, 8 * 2)
        billed = 3 + 3 * sum(f in BILLED for f in FAULTS)
        assert st.usage == {k: billed * v for k, v in FakeChatServer.USAGE.items()}
        assert _cached(cache) == {t: fake_german(t) for t in clean}  # no failure is cached

        server.faults = {}  # fixed
        n_before = len(server.log)
        st2 = T.TranslationStats()
        out2 = T.translate_all(texts, "en", "de", _cfg(server), cache, progress=False, stats=st2)
        assert sorted(t for t, _, _ in server.log[n_before:]) == sorted(faulty)  # each failed one, once
    assert [r.text for r in out2] == [fake_german(t) for t in texts]
    assert (st2.cache_hits, st2.translated, st2.failed, st2.requests, st2.retries) == (3, 8, 0, 8, 0)
    assert _cached(cache) == {t: fake_german(t) for t in texts}


def test_details_name_the_fault(tmp_path):
    faulty = {_sentence(f): f for f in ("malformed", "html", "null", "500", "timeout", "400")}
    with FakeChatServer(faulty, hang=2 * TIMEOUT) as server:
        out = T.translate_all(list(faulty), "en", "de", _cfg(server), tmp_path / "c.sqlite", progress=False)
        assert server.requests_for(_sentence("400")) == ["400"]  # a request's own 4xx is not retried
    detail = {f: r.failures[t].detail for r, (t, f) in zip(out, faulty.items())}
    assert "malformed response (application/json, Expecting value" in detail["malformed"]
    assert "malformed response (text/html" in detail["html"] and "502 Bad Gateway" in detail["html"]
    assert "null content" in detail["null"]
    assert "HTTP 500" in detail["500"] and "fault 500" in detail["500"]
    assert f"no answer within {TIMEOUT:g} s" in detail["timeout"]
    assert "HTTP 400" in detail["400"] and detail["400"].endswith("(after 1 request)")


def test_retry_after_is_honoured_and_backoff_grows(tmp_path, monkeypatch):
    monkeypatch.setattr(T.OpenAITranslator, "INITIAL_BACKOFF", 0.05)
    monkeypatch.setattr(T.OpenAITranslator, "MAX_BACKOFF", 10.0)
    limited, broken = _sentence("limited"), _sentence("broken")
    with FakeChatServer({limited: ["429"], broken: "500"}, retry_after=0.4) as server:
        T.translate_all([limited, broken], "en", "de", _cfg(server, max_retries=3), tmp_path / "c.sqlite",
                        progress=False)
        times = {t: [when for s, _, when in server.log if s == t] for t in (limited, broken)}
    # The 429 said "Retry-After: 0.4": the retry waits that long, not the 0.05 s backoff.
    assert len(times[limited]) == 2 and times[limited][1] - times[limited][0] >= 0.4
    # Without Retry-After: 0.05 * 2**k seconds, less at most 25% jitter.
    gaps = [b - a for a, b in zip(times[broken], times[broken][1:])]
    assert len(gaps) == 3
    for k, gap in enumerate(gaps):
        assert gap >= 0.75 * 0.05 * 2 ** k, gaps


def test_wrong_key_or_model_stops_the_run(tmp_path):
    texts = [_sentence(i) for i in range(20)]
    with FakeChatServer(default="401") as server:
        with pytest.raises(T.TranslationError, match=r"HTTP 401 for model 'fake-model'.*\$CLO_FAKE_KEY"):
            T.translate_all(texts, "en", "de", _cfg(server, concurrency=2), tmp_path / "c.sqlite", progress=False)
        assert 1 <= len(server.log) <= 2  # those in flight; the queued ones were not sent


def test_an_endpoint_that_is_down_stops_the_run(tmp_path, monkeypatch):
    """Failing every segment of a large build with full backoff would take hours: after
    GIVE_UP_AFTER errors in a row the run stops, keeping what was translated."""
    monkeypatch.setattr(T.OpenAITranslator, "GIVE_UP_AFTER", 5)
    texts = [_sentence(i) for i in range(20)]
    with FakeChatServer({texts[0]: "ok", texts[1]: "empty"}, default="500") as server:
        cfg = _cfg(server, concurrency=1, max_retries=1, batch_size=100)
        with pytest.raises(T.TranslationError, match=r"the last 5 segments all failed \(last: .*HTTP 500"):
            T.translate_all(texts, "en", "de", cfg, tmp_path / "c.sqlite", progress=False)
        # One request at a time, in plan order: two for each of the 5 failures, then nothing more.
        assert len([m for _, m, _ in server.log if m == "500"]) == 5 * 2


def test_translate_texts_raises_after_caching_the_rest(tmp_path):
    bad, good = _sentence("bad"), _sentence("good")
    expected = r"1 segment\(s\) have no usable translation \(\{'empty': 1\}\)"
    with FakeChatServer({bad: "empty"}) as server, pytest.raises(T.TranslationError, match=expected):
        T.translate_texts([good, bad], "en", "de", _cfg(server, max_retries=1), tmp_path / "c.sqlite", progress=False)
    assert _cached(tmp_path / "c.sqlite") == {good: fake_german(good)}


# --- through a build ----------------------------------------------------------------------------

N = 12
# (record, field, fault): persistent faults fail the record, transient ones (lists) recover.
PLAN = [(1, "x", "empty"), (2, "y", "echo"), (3, "x", "malformed"), (4, "y", "html"), (5, "x", "null"),
        (6, "y", "500"), (7, "x", "timeout"), (8, "y", "429"), (9, "x", ["500", "malformed"]), (10, "y", ["echo"])]


def _rows() -> list[dict]:
    return [{"instruction": f"Write sentence number {i} about a dog.", "input": "",
             "output": f"Here is sentence {i}. The dog sleeps in the garden and dreams of bones."} for i in range(N)]


def _build_cfg(src, server):
    translator = {"kind": "openai", "model": "fake-model", "base_url": server.url, "api_key_env": "CLO_FAKE_KEY",
                  "max_retries": 2, "timeout": TIMEOUT, "concurrency": 4, "batch_size": 8}
    return config_from_dict({"lang": "de", "data": {"source": "alpaca", "path": str(src), "n": 50,
                                                    "translator": translator, "val_fraction": 0.25, "subsets": [4]}})


def test_build_rejects_records_with_failed_segments(tmp_path):
    rows = _rows()
    src = tmp_path / "a.json"
    src.write_text(json.dumps(rows))
    field = {"x": "instruction", "y": "output"}
    faults = {rows[i][field[f]]: mode for i, f, mode in PLAN}
    out = tmp_path / "out"
    with FakeChatServer(faults, hang=2 * TIMEOUT) as server:
        s = build_dataset(_build_cfg(src, server), out, progress=False)
        rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
        assert [(r["id"], r["reasons"]) for r in rejects] == [
            ("alpaca-1", ["segment_empty_x_tgt"]), ("alpaca-2", ["segment_echo_y_tgt"]),
            ("alpaca-3", ["segment_error_x_tgt"]), ("alpaca-4", ["segment_error_y_tgt"]),
            ("alpaca-5", ["segment_empty_x_tgt"]), ("alpaca-6", ["segment_error_y_tgt"]),
            ("alpaca-7", ["segment_error_x_tgt"]), ("alpaca-8", ["segment_error_y_tgt"]),
        ]
        r3 = rejects[2]
        assert r3["failures"] == [{"field": "x_tgt", "segment": rows[3]["instruction"], "reason": "error",
                                   "detail": r3["failures"][0]["detail"]}]
        assert "malformed response" in r3["failures"][0]["detail"]
        assert r3["record"]["x_tgt"] is None and r3["record"]["y_tgt"] == fake_german(rows[3]["output"])
        # Nothing damaged reaches the dataset: every text is the server's full translation.
        kept = read_records(out / "train.jsonl") + read_records(out / "validation.jsonl")
        assert sorted(r.id for r in kept) == sorted(f"alpaca-{i}" for i in (0, 9, 10, 11))
        for r in kept:
            assert r.x_tgt == fake_german(r.x_en) and r.y_tgt == fake_german(r.y_en)
        t = s["translation"]
        # 24 segments: 14 clean (1 request), 8 persistent faults (3), "500, malformed" (3), "echo" (2).
        assert (t["unique_segments"], t["translated"], t["failed"]) == (24, 16, 8)
        assert t["failures"] == {"echo": 1, "empty": 2, "error": 5}
        assert (t["requests"], t["retries"]) == (14 + 8 * 3 + 3 + 2, 8 * 2 + 2 + 1)
        billed = 16 + 3 * 3 + 1  # the good answers; empty, null, echo three times; the transient echo
        assert t["usage"] == {k: billed * v for k, v in FakeChatServer.USAGE.items()}
        assert s["rejects_by_reason"] == {"segment_echo_y_tgt": 1, "segment_empty_x_tgt": 2,
                                          "segment_error_x_tgt": 2, "segment_error_y_tgt": 3}
        md = (out / "summary.md").read_text()
        assert "| failed segments | 8 |" in md and "| requests / retries | 43 / 19 |" in md
        assert f"| tokens used (prompt / completion) | {7 * billed} / {5 * billed} |" in md

        server.faults = {}  # fixed: the rerun asks for the 8 failed segments only
        n_before = len(server.log)
        s2 = build_dataset(_build_cfg(src, server), out, progress=False)
        assert sorted(t for t, _, _ in server.log[n_before:]) == sorted(k for k, v in faults.items()
                                                                       if isinstance(v, str))
    t2 = s2["translation"]
    assert (t2["cache_hits"], t2["translated"], t2["failed"], t2["requests"], t2["retries"]) == (16, 8, 0, 8, 0)
    assert (s2["records_out"], s2["rejects"]) == (N, 0)
    kept = read_records(out / "train.jsonl") + read_records(out / "validation.jsonl")
    assert all(r.x_tgt == fake_german(r.x_en) and r.y_tgt == fake_german(r.y_en) for r in kept)


def test_build_where_every_segment_fails_is_an_error(tmp_path):
    src = tmp_path / "a.json"
    src.write_text(json.dumps(_rows()[:3]))
    with FakeChatServer(default="500") as server, pytest.raises(BuildError, match="train.jsonl: no record passed"):
        build_dataset(_build_cfg(src, server), tmp_path / "out", progress=False)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rejects_by_reason"] == {"segment_error_x_tgt": 3, "segment_error_y_tgt": 3}
    assert (tmp_path / "out" / "train.jsonl").read_text() == ""
