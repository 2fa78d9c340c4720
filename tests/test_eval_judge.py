"""The judge against a local OpenAI-compatible HTTP server with scripted rankings."""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from clo import languages
from clo.config import load_config
from clo.eval import evaluate
from clo.eval.judge import build_messages, parse_ranking, score_from_ranking, swap_order


def _completion(model: str, content: str) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class ScriptedJudge(BaseHTTPRequestHandler):
    """Ranks first the output containing WIN; TIE in both: tie; GARBAGE: no JSON; FLAKY: no JSON the
    first time it sees an instruction. Until ``fixed`` is set: ECHO answers with the prompt itself
    (as a misconfigured judge did), MALFORMED with truncated JSON, HTML with a 200 HTML page,
    HTML502 with a 502 HTML page, and any request with 401 while ``refuse`` is set."""

    requests: ClassVar[list] = []
    seen: ClassVar[dict] = {}
    fixed: ClassVar[bool] = False
    refuse: ClassVar[bool] = False

    def log_message(self, *a):
        pass

    def _send(self, status: int, ctype: str, data: bytes, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        ScriptedJudge.requests.append(body)
        seg1 = user.split('"model_1": ')[1].split('"model_2": ')[0]
        seg2 = user.split('"model_2": ')[1].split("## Your task")[0]
        instr = user.split('{"instruction": ')[1].split("}")[0]
        first_time = instr not in ScriptedJudge.seen
        ScriptedJudge.seen[instr] = True
        broken = not ScriptedJudge.fixed
        if ScriptedJudge.refuse:
            return self._send(401, "application/json", b'{"error": {"message": "Incorrect API key provided"}}')
        if broken and "MALFORMED" in user:
            return self._send(200, "application/json", b'{"id": "x", "object": "chat.completion", "choices": [')
        if broken and "HTML502" in user:
            # retry-after-ms: the wait before the judge asks again
            return self._send(502, "text/html", b"<html><body>502 Bad Gateway</body></html>", {"retry-after-ms": "1"})
        if broken and "HTML" in user:
            return self._send(200, "text/html", b"<html><body>Please log in</body></html>")
        if broken and "ECHO" in user:
            content = user
        elif "GARBAGE" in user or ("FLAKY" in user and first_time):
            content = "Both answers have merits; I cannot decide."
        elif "TIE" in seg1 and "TIE" in seg2:
            content = '[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 1}]'
        else:
            w = "model_1" if "WIN" in seg1 else "model_2"
            l = "model_2" if w == "model_1" else "model_1"
            content = f"```json\n[{{\"model\": \"{w}\", \"rank\": 1}}, {{\"model\": \"{l}\", \"rank\": 2}}]\n```"
        self._send(200, "application/json", json.dumps(_completion(body["model"], content)).encode())


@pytest.fixture()
def judge_server():
    ScriptedJudge.requests, ScriptedJudge.seen = [], {}
    ScriptedJudge.fixed = ScriptedJudge.refuse = False
    srv = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedJudge)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()
    th.join(timeout=10)


MODEL_OUT = ["WIN a", "WIN b", "WIN c", "LOSE d", "TIE e", "GARBAGE f", "FLAKY WIN g"]
BASE_OUT = ["LOSE 0", "LOSE 1", "LOSE 2", "WIN 3", "TIE 4", "LOSE 5", "LOSE 6"]


def _scripted_generate(model, tok, prompts, **kw):
    # Responses keyed by prompt ("Anweisung k" -> MODEL_OUT[k]), one batch.
    yield list(range(len(prompts))), [MODEL_OUT[int(p.split()[-1])] for p in prompts]


def test_judged_win_rate_end_to_end(judge_server, tmp_path, monkeypatch):
    from clo.testing import tiny_model, tiny_tokenizer

    monkeypatch.setattr("clo.eval.generation.iter_generate", _scripted_generate)
    monkeypatch.delenv("CLO_TEST_JUDGE_KEY", raising=False)
    n = len(MODEL_OUT)
    (tmp_path / "instr.json").write_text(json.dumps(
        [{"instruction": f"instruction {k}", "output": "ref", "generator": "ref", "dataset": "t"} for k in range(n)]))
    (tmp_path / "de.json").write_text(json.dumps([f"Anweisung {k}" for k in range(n)]))
    (tmp_path / "base.json").write_text(json.dumps([{"instruction": "", "output": o} for o in BASE_OUT]))
    cfg = load_config(None, [f"eval.judge.base_url={judge_server}", "eval.judge.api_key_env=CLO_TEST_JUDGE_KEY",
                             "eval.judge.max_retries=0", "eval.judge.retries=2", "eval.seed=3", "lang=de"])
    model = (tiny_model("llama", vocab_size=512), tiny_tokenizer())
    opts = {"instructions_file": str(tmp_path / "instr.json"), "translated_file": str(tmp_path / "de.json"),
            "baseline_outputs": str(tmp_path / "base.json")}
    m = evaluate("alpacaeval", model, cfg, tmp_path / "out", **opts)

    # item 5 never parses (failure), item 6 parses on the retry; scores 1,1,1,0,0.5,1
    assert m["n"] == 6 and m["failures"] == 1
    assert (m["wins"], m["ties"], m["losses"]) == (4, 1, 1)
    assert m["win_rate"] == 0.75
    assert m["stderr"] == pytest.approx(math.sqrt(0.875 / 30), abs=1e-12)
    assert len(ScriptedJudge.requests) == 5 * 1 + 3 + 2

    doc = json.loads((tmp_path / "out" / "alpacaeval-de.json").read_text())
    recs = doc["records"]
    swapped = [r["swapped"] for r in recs]
    assert swapped == [swap_order(3, str(k)) for k in range(n)]
    assert True in swapped and False in swapped  # both display orders were exercised
    for r in recs[:3]:  # model won: it sat in position 2 exactly when swapped
        assert r["ranking"] == (2 if r["swapped"] else 1) and r["score"] == 1.0
    assert recs[5]["failed"] and recs[5]["attempts"] == 3 and recs[5]["score"] is None
    assert recs[6]["attempts"] == 2 and recs[6]["score"] == 1.0
    # the judge was told the instruction's language
    assert all("written in German" in b["messages"][-1]["content"] for b in ScriptedJudge.requests)
    assert ScriptedJudge.requests[0]["messages"][0]["role"] == "system"

    outs = json.loads((tmp_path / "out" / "alpacaeval-de.model_outputs.json").read_text())
    assert [o["output"] for o in outs] == MODEL_OUT and outs[0]["instruction"] == "Anweisung 0"
    assert set(outs[0]) == {"instruction", "output", "generator", "dataset"}

    assert "no ranking in the format asked for in 3 answer(s)" in recs[5]["error"] and recs[6]["error"] is None

    # verdicts are cached, failures are not: a rerun asks again for item 5 only (1 + 2 retries)
    before = len(ScriptedJudge.requests)
    assert evaluate("alpacaeval", model, cfg, tmp_path / "out", **opts) == m
    assert len(ScriptedJudge.requests) == before + 3
    assert {r["messages"][-1]["content"].count("Anweisung 5") for r in ScriptedJudge.requests[before:]} == {1}


def test_parse_ranking_variants():
    assert parse_ranking('[{"model": "model_1", "rank": 2}, {"model": "model_2", "rank": 1}]') == 2
    assert parse_ranking("[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]") == 1
    assert parse_ranking('[{"model": "model_2", "rank": 1}, {"model": "model_1", "rank": 1}]') == 0
    assert parse_ranking('\n ```json\n[{"model": "model_1", "rank": 2}, {"model": "model_2", "rank": 1}]\n```\n') == 2
    assert parse_ranking('```\n[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 2}]```') == 1
    assert parse_ranking('[{"model": "model_1", "rank": 1}]') is None
    assert parse_ranking("model_1 is better") is None
    assert parse_ranking('[{"model": "model_3", "rank": 1}, {"model": "model_2", "rank": 2}]') is None


@pytest.mark.parametrize("text", [
    # a ranking inside a longer answer: not the answer format asked for
    'Ranking: [{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 2}]',
    '[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 2}]\nModel 1 is clearly better.',
    'Ranking:\n```json\n[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 2}]\n```',
    '```json\n[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 2}]\n``` and ```[1]```',
    # rankings that are not the two models ranked 1 or 2
    '[{"model": "model_1", "rank": 2}, {"model": "model_2", "rank": 2}]',
    '[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 3}]',
    '[{"model": "model_1", "rank": "1"}, {"model": "model_2", "rank": "2"}]',
    '[{"model": "model_1", "rank": true}, {"model": "model_2", "rank": 2}]',
    '[{"model": "model_1", "rank": 1}, {"model": "model_1", "rank": 2}]',
    '[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 2}, {"model": "model_2", "rank": 2}]',
    "[" * 100_000,
    "",
])
def test_parse_ranking_accepts_only_the_format_asked_for(text):
    assert parse_ranking(text) is None


def test_an_echoed_prompt_is_no_verdict():
    # The prompt's own example ranks model_1 first; a judge that echoes the prompt back names no winner.
    for lang in ("en", "de"):
        for msg in build_messages("Sag hallo", "hallo", "hi", languages.get(lang)):
            assert parse_ranking(msg["content"]) is None
    user = build_messages("Sag hallo", "hallo", "hi", languages.get("de"))[1]["content"]
    assert '[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 2}]' in user


def test_score_from_ranking_undoes_order():
    assert score_from_ranking(1, swapped=False) == 1.0
    assert score_from_ranking(1, swapped=True) == 0.0
    assert score_from_ranking(2, swapped=True) == 1.0
    assert score_from_ranking(0, swapped=True) == 0.5


def test_language_rule_only_for_non_english():
    en = build_messages("hi", "a", "b", languages.get("en"))[1]["content"]
    ko = build_messages("안녕", "a", "b", languages.get("ko"))[1]["content"]
    assert "written in" not in en
    assert "The instruction is written in Korean. A response that is not written in Korean" in ko
    assert '"model_1": "a"' in ko and '"model_2": "b"' in ko


def test_local_judge_backend_counts_unparseable_verdicts(tmp_path):
    # A tiny random chat model as the local judge: it cannot produce a ranking, so every verdict is
    # retried and then counted as a failure.
    from clo.eval.config import JudgeConfig
    from clo.eval.judge import judge_item, make_judge
    from clo.testing import tiny_model, tiny_tokenizer

    tiny_model("llama", vocab_size=512).save_pretrained(tmp_path / "j")
    tiny_tokenizer().save_pretrained(tmp_path / "j")
    judge = make_judge(JudgeConfig(backend="local", model=str(tmp_path / "j"), max_tokens=8))
    v = judge_item(judge, "0", "Say hi", "hi", "hello", languages.get("en"), seed=0, retries=1)
    assert v["failed"] and v["attempts"] == 2 and len(v["raw"]) == 2 and v["score"] is None
    with pytest.raises(ValueError, match="unknown judge backend 'x'; known: openai, local"):
        make_judge(JudgeConfig(backend="x"))


def test_alpacaeval_translates_instructions_through_the_data_translator(tmp_path, monkeypatch):
    """Without a translated file, the English instructions go through ``data.translator`` once;
    the translations are cached next to the results and a rerun translates nothing."""
    from clo.data import translators as T
    from clo.testing import tiny_model, tiny_tokenizer

    calls = []

    class Tagging(T.Translator):
        kind = "tagging"

        def fingerprint(self) -> str:
            return "tagging/v1"

        def translate_batch(self, texts, src_lang, tgt_lang):
            calls.append((list(texts), src_lang, tgt_lang))
            return [f"[{tgt_lang}] {t}" for t in texts]

    monkeypatch.setitem(T.TRANSLATORS, "tagging", Tagging)
    seen = []

    def echo(model, tok, prompts, **kw):
        seen.extend(prompts)
        yield list(range(len(prompts))), [f"Antwort auf {p}" for p in prompts]

    monkeypatch.setattr("clo.eval.generation.iter_generate", echo)
    (tmp_path / "instr.json").write_text(json.dumps(
        [{"instruction": f"Name a colour number {k}.", "output": "", "generator": "x", "dataset": "t"}
         for k in range(3)]))
    (tmp_path / "base.json").write_text(json.dumps([{"instruction": "", "output": "b"}] * 3))
    cfg = load_config(None, ["lang=de", "data.translator.kind=tagging"])
    model = (tiny_model("llama", vocab_size=512), tiny_tokenizer())

    def judge(messages):
        return '[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 1}]'

    opts = {"instructions_file": str(tmp_path / "instr.json"), "baseline_outputs": str(tmp_path / "base.json"),
            "judge": judge}
    m = evaluate("alpacaeval", model, cfg, tmp_path / "out", **opts)
    want = [f"[de] Name a colour number {k}." for k in range(3)]
    assert seen == want  # the model answered the German instructions
    assert sum(len(texts) for texts, _, _ in calls) == 3 and {c[1:] for c in calls} == {("en", "de")}
    recs = json.loads((tmp_path / "out" / "alpacaeval-de.json").read_text())["records"]
    assert [r["instruction"] for r in recs] == want
    assert [r["instruction_en"] for r in recs] == [f"Name a colour number {k}." for k in range(3)]
    assert (m["ties"], m["n"]) == (3, 3)
    assert (tmp_path / "out" / "alpacaeval-instructions-de.sqlite").is_file()

    # A rerun into a fresh result directory with the same translation cache translates nothing.
    calls.clear()
    (tmp_path / "out2").mkdir()
    import shutil

    shutil.copy(tmp_path / "out" / "alpacaeval-instructions-de.sqlite", tmp_path / "out2")
    evaluate("alpacaeval", model, cfg, tmp_path / "out2", **opts)
    assert calls == []


def test_outputs_task_stands_in_for_the_baseline_model(tmp_path):
    """`alpacaeval-outputs` answers exactly as `alpacaeval` answers for a baseline model (sampled,
    same seed), so its file can replace the model; a file for other instructions is refused."""
    from clo.eval.core import EvalDataError
    from clo.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model, base = (tiny_model("llama", vocab_size=512), tok), (tiny_model("qwen2", vocab_size=512), tok)
    (tmp_path / "instr.json").write_text(json.dumps(
        [{"instruction": f"Say something about number {k}.", "output": "", "generator": "x", "dataset": "d"}
         for k in range(5)]))
    cfg = load_config(None, ["lang=en", "eval.max_new_tokens=6", "eval.batch_size=2", "eval.seed=7"])
    common = {"instructions_file": str(tmp_path / "instr.json"),
              "judge": lambda m: '[{"model": "model_1", "rank": 2}, {"model": "model_2", "rank": 1}]'}

    m = evaluate("alpacaeval-outputs", base, cfg, tmp_path / "b", instructions_file=common["instructions_file"])
    outputs_file = tmp_path / "b" / "alpacaeval-outputs-en.model_outputs.json"
    rows = json.loads(outputs_file.read_text())
    assert m["n"] == 5 and [r["dataset"] for r in rows] == ["d"] * 5
    assert m["mean_chars"] == sum(len(r["output"]) for r in rows) / 5

    evaluate("alpacaeval", model, cfg, tmp_path / "direct", baseline=base, **common)
    evaluate("alpacaeval", model, cfg, tmp_path / "file", baseline_outputs=str(outputs_file), **common)
    direct = json.loads((tmp_path / "direct" / "alpacaeval-en.json").read_text())["records"]
    via_file = json.loads((tmp_path / "file" / "alpacaeval-en.json").read_text())["records"]
    assert [r["baseline_output"] for r in via_file] == [r["baseline_output"] for r in direct] == [r["output"] for r in rows]
    assert [r["output"] for r in via_file] == [r["output"] for r in direct]
    assert len({r["output"] for r in rows}) > 1

    rows[3]["instruction"] = "Something else."
    (tmp_path / "other.json").write_text(json.dumps(rows))
    with pytest.raises(EvalDataError, match=r"other.json: item 3: field 'instruction' is 'Something else.'"):
        evaluate("alpacaeval", model, cfg, tmp_path / "bad", baseline_outputs=str(tmp_path / "other.json"), **common)


def _no_nan(s):
    raise ValueError(f"not strict JSON: {s}")


def _judged_run(tmp_path, server, model_out, base_out, *overrides):
    """An alpacaeval run against ``server`` on English instructions, the model answering
    ``model_out`` and the baseline ``base_out``; returns a function that (re)runs it."""
    from clo.testing import tiny_model, tiny_tokenizer

    n = len(model_out)

    def answers(model, tok, prompts, **kw):
        yield list(range(len(prompts))), [model_out[int(p.split()[-1])] for p in prompts]

    (tmp_path / "instr.json").write_text(json.dumps(
        [{"instruction": f"instruction {k}", "output": base_out[k], "generator": "ref", "dataset": "t"}
         for k in range(n)]))
    cfg = load_config(None, [f"eval.judge.base_url={server}", "eval.judge.api_key_env=CLO_TEST_JUDGE_KEY",
                             "eval.judge.max_retries=0", "eval.judge.retries=1", "eval.seed=3", "lang=en",
                             *overrides])
    model = (tiny_model("llama", vocab_size=512), tiny_tokenizer())

    def run(monkeypatch):
        monkeypatch.setattr("clo.eval.generation.iter_generate", answers)
        monkeypatch.delenv("CLO_TEST_JUDGE_KEY", raising=False)
        m = evaluate("alpacaeval", model, cfg, tmp_path / "out", instructions_file=str(tmp_path / "instr.json"))
        doc = json.loads((tmp_path / "out" / "alpacaeval-en.json").read_text(), parse_constant=_no_nan)
        assert doc["metrics"] == m
        return m, doc["records"]

    return run


def test_echoed_prompts_fail_and_are_judged_again_once_the_judge_is_fixed(judge_server, tmp_path, monkeypatch):
    """Items 2-5 get the prompt echoed back (the old parser read its example as "model_1 first"):
    each is asked 1 + 1 times and fails. After the judge is fixed, a rerun asks for exactly those
    four, once each, and the win rate changes from 1/2 to 4/6; a third run asks nothing."""
    model_out = ["WIN a", "LOSE b", "ECHO WIN c", "ECHO WIN d", "ECHO WIN e", "ECHO f"]
    base_out = ["LOSE 0", "WIN 1", "LOSE 2", "LOSE 3", "LOSE 4", "WIN 5"]
    run = _judged_run(tmp_path, judge_server, model_out, base_out)

    m, recs = run(monkeypatch)
    assert len(ScriptedJudge.requests) == 2 + 4 * 2
    assert (m["n"], m["wins"], m["losses"], m["failures"], m["win_rate"]) == (2, 1, 1, 4, 0.5)
    for r in recs[2:]:
        assert r["failed"] and r["ranking"] is None and r["score"] is None and r["attempts"] == 2
        assert r["raw"][0].startswith("I want you to rank")  # what came back was the prompt
        assert r["error"] == "no ranking in the format asked for in 2 answer(s)"

    ScriptedJudge.fixed = True
    before = len(ScriptedJudge.requests)
    m, recs = run(monkeypatch)
    asked = [r["messages"][-1]["content"] for r in ScriptedJudge.requests[before:]]
    assert sorted(int(a.split('{"instruction": "instruction ')[1][0]) for a in asked) == [2, 3, 4, 5]
    assert (m["n"], m["wins"], m["losses"], m["failures"]) == (6, 4, 2, 0)
    assert m["win_rate"] == pytest.approx(4 / 6)
    assert [r["score"] for r in recs] == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]

    before = len(ScriptedJudge.requests)
    assert run(monkeypatch)[0] == m
    assert len(ScriptedJudge.requests) == before


def test_malformed_and_html_bodies_are_retried_then_failed(judge_server, tmp_path, monkeypatch, caplog):
    """A truncated JSON body and a 200 HTML page are asked for again after 1 s and 2 s (max_retries=2),
    then the item fails with a message naming the endpoint; a 502 page is asked for again after
    its Retry-After (1 ms). The run goes on with the other items (judged concurrently: the waits
    of items 1-3 interleave), and the next run retries the failed ones."""
    sleeps = []
    monkeypatch.setattr("clo.eval.judge._sleep", sleeps.append)
    model_out = ["WIN a", "MALFORMED WIN b", "HTML WIN c", "HTML502 WIN d", "LOSE e"]
    base_out = ["LOSE 0", "LOSE 1", "LOSE 2", "LOSE 3", "WIN 4"]
    run = _judged_run(tmp_path, judge_server, model_out, base_out, "eval.judge.max_retries=2")

    with caplog.at_level("WARNING", logger="clo.eval.judge"):
        m, recs = run(monkeypatch)
    assert len(ScriptedJudge.requests) == 1 + 3 + 3 + 3 + 1
    assert sorted(sleeps) == [0.001, 0.001, 1.0, 1.0, 2.0, 2.0]
    assert (m["n"], m["wins"], m["losses"], m["failures"], m["win_rate"]) == (2, 1, 1, 3, 0.5)
    assert [r["failed"] for r in recs] == [False, True, True, True, False]
    assert recs[1]["error"].startswith(f"judge endpoint {judge_server}: malformed JSON body")
    assert recs[1]["error"].endswith("(3 attempts)")
    assert recs[2]["error"] == (f"judge endpoint {judge_server}: not a chat completion: "
                                "'<html><body>Please log in</body></html>' (3 attempts)")
    assert recs[3]["error"] == f"judge endpoint {judge_server}: HTTP 502: <html><body>502 Bad Gateway</body></html>"
    assert all(r["raw"] == [] and r["attempts"] == 0 for r in recs[1:4])
    assert sum(f"judge endpoint {judge_server}" in r.getMessage() for r in caplog.records) == 4 + 3
    assert "Traceback" not in caplog.text

    ScriptedJudge.fixed = True
    before = len(ScriptedJudge.requests)
    m, _ = run(monkeypatch)
    assert len(ScriptedJudge.requests) == before + 3
    assert (m["n"], m["wins"], m["losses"], m["failures"], m["win_rate"]) == (5, 4, 1, 0, 0.8)


def test_all_failed_writes_null_win_rate_and_the_reason(judge_server, tmp_path, monkeypatch):
    run = _judged_run(tmp_path, judge_server, ["ECHO WIN a", "MALFORMED b", "HTML c"], ["x", "y", "z"])
    monkeypatch.setattr("clo.eval.judge._sleep", lambda s: None)
    m, _ = run(monkeypatch)  # json.loads with parse_constant raising: no NaN in the file
    assert (m["win_rate"], m["stderr"], m["lc_win_rate"]) == (None, None, None)
    assert (m["n"], m["failures"]) == (0, 3)
    assert m["reason"].startswith("no verdict: all 3 judgments failed")
    md = (tmp_path / "out" / "alpacaeval-en.md").read_text()
    assert "| win_rate | None |" in md and "all 3 judgments failed" in md


def test_a_refused_key_stops_the_run_with_a_config_error(judge_server, tmp_path, monkeypatch):
    from clo.config_base import ConfigError

    ScriptedJudge.refuse = True
    run = _judged_run(tmp_path, judge_server, ["WIN a", "WIN b"], ["x", "y"])
    with pytest.raises(ConfigError, match=rf"judge endpoint {judge_server} refused model 'gpt-4o' \(HTTP 401"):
        run(monkeypatch)
    assert len(ScriptedJudge.requests) == 1


# ---------------------------------------------------------------------------------------------
# Concurrency, rate limits and Retry-After


class LatencyJudge(BaseHTTPRequestHandler):
    """Answers after ``latency`` seconds with a verdict that depends on the request alone (model_1
    wins when its output sorts before model_2's); counts requests in flight. The request numbered
    ``throttle`` (0-based) gets a 429 with ``retry-after-ms: throttle_ms`` instead."""

    latency: ClassVar[float] = 0.05
    lock = threading.Lock()
    in_flight: ClassVar[int] = 0
    max_in_flight: ClassVar[int] = 0
    arrivals: ClassVar[list] = []
    throttle: ClassVar[int | None] = None
    throttle_ms: ClassVar[int] = 0
    throttled_at: ClassVar[float | None] = None

    def log_message(self, *a):
        pass

    def do_POST(self):
        import time

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with LatencyJudge.lock:
            number = len(LatencyJudge.arrivals)
            LatencyJudge.arrivals.append(time.monotonic())
            LatencyJudge.in_flight += 1
            LatencyJudge.max_in_flight = max(LatencyJudge.max_in_flight, LatencyJudge.in_flight)
        try:
            time.sleep(LatencyJudge.latency)
            if number == LatencyJudge.throttle:
                data = b'{"error": {"message": "Rate limit reached", "type": "requests"}}'
                self.send_response(429)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("retry-after-ms", str(LatencyJudge.throttle_ms))
                self.end_headers()
                self.wfile.write(data)
                LatencyJudge.throttled_at = time.monotonic()
                return
            user = body["messages"][-1]["content"]
            seg1 = user.split('"model_1": ')[1].split('"model_2": ')[0]
            seg2 = user.split('"model_2": ')[1].split("## Your task")[0]
            first = "model_1" if seg1.strip() < seg2.strip() else "model_2"
            other = "model_2" if first == "model_1" else "model_1"
            content = f'[{{"model": "{first}", "rank": 1}}, {{"model": "{other}", "rank": 2}}]'
            data = json.dumps(_completion(body["model"], content)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        finally:
            with LatencyJudge.lock:
                LatencyJudge.in_flight -= 1


@pytest.fixture()
def latency_server():
    LatencyJudge.in_flight = LatencyJudge.max_in_flight = 0
    LatencyJudge.arrivals, LatencyJudge.throttle, LatencyJudge.throttled_at = [], None, None
    srv = ThreadingHTTPServer(("127.0.0.1", 0), LatencyJudge)
    srv.daemon_threads = True
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()
    th.join(timeout=10)


MANY_MODEL = [f"answer {k * 7 % 24:02d}" for k in range(24)]
MANY_BASE = [f"answer {k * 11 % 24:02d}x" for k in range(24)]


def test_concurrent_judging_gives_the_sequential_verdicts_in_order(latency_server, tmp_path, monkeypatch):
    """24 items at concurrency 1 and 8: the same records in the same order; at most 8 requests
    were in flight at once, and 8 were."""
    docs = []
    for concurrency in (1, 8):
        LatencyJudge.max_in_flight = 0
        out = tmp_path / f"c{concurrency}"
        out.mkdir()
        run = _judged_run(out, latency_server, MANY_MODEL, MANY_BASE, f"eval.judge.concurrency={concurrency}")
        m, recs = run(monkeypatch)
        assert LatencyJudge.max_in_flight == concurrency
        docs.append((m, recs))
    assert docs[0] == docs[1]
    assert [r["id"] for r in docs[1][1]] == [str(k) for k in range(24)]
    assert docs[1][0]["n"] == 24 and 0 < docs[1][0]["wins"] < 24


def test_a_killed_concurrent_run_keeps_the_verdicts_it_had(tmp_path, monkeypatch):
    """Verdicts are cached as they arrive: after a judge dies mid-run, the rerun judges only the
    items without a verdict, and the result is that of an uninterrupted run."""
    from clo.testing import tiny_model, tiny_tokenizer

    class Died(RuntimeError):
        pass

    n = 30
    (tmp_path / "instr.json").write_text(json.dumps(
        [{"instruction": f"instruction {k}", "output": f"ref {k}", "generator": "ref", "dataset": "t"}
         for k in range(n)]))
    monkeypatch.setattr("clo.eval.generation.iter_generate",
                        lambda model, tok, prompts, **kw: iter([(list(range(len(prompts))),
                                                                 [f"mine {p}" for p in prompts])]))
    calls = []
    lock = threading.Lock()

    def judge(messages, die_at=None):
        import time

        with lock:
            calls.append(1)
            k = len(calls)
        if die_at is not None and k == die_at:
            raise Died("the judge died")  # at once: the other workers are inside their requests
        time.sleep(0.03)
        user = messages[-1]["content"]
        w = "model_1" if "mine" in user.split('"model_1": ')[1].split('"model_2"')[0] else "model_2"
        o = "model_2" if w == "model_1" else "model_1"
        return f'[{{"model": "{w}", "rank": 1}}, {{"model": "{o}", "rank": 2}}]'

    cfg = load_config(None, ["lang=en", "eval.judge.concurrency=4"])
    model = (tiny_model("llama", vocab_size=512), tiny_tokenizer())
    opts = {"instructions_file": str(tmp_path / "instr.json")}
    full = evaluate("alpacaeval", model, cfg, tmp_path / "full", judge=judge, **opts)
    assert len(calls) == n and full["wins"] == n

    calls.clear()
    with pytest.raises(Died):
        evaluate("alpacaeval", model, cfg, tmp_path / "out", judge=lambda m: judge(m, die_at=12), **opts)
    cache = tmp_path / "out" / "alpacaeval-en.cache.jsonl"
    cached = sum(1 for line in cache.read_text().splitlines() if '"key": "verdict:' in line)
    # the verdicts that had arrived are kept; no item started after the 12th request failed (the
    # 3 in flight beside it finish)
    assert 1 <= cached <= len(calls) - 1 and len(calls) <= 12 + 3
    calls.clear()
    assert evaluate("alpacaeval", model, cfg, tmp_path / "out", judge=judge, **opts) == full
    assert len(calls) == n - cached
    recs = json.loads((tmp_path / "out" / "alpacaeval-en.json").read_text())["records"]
    assert recs == json.loads((tmp_path / "full" / "alpacaeval-en.json").read_text())["records"]


def test_a_429_holds_back_every_request_for_its_retry_after(latency_server, tmp_path, monkeypatch):
    """The third request gets a 429 asking for 400 ms: from the moment the judge reads it, no
    request goes out for 400 ms (not only the refused one), then that item is judged normally."""
    LatencyJudge.latency, LatencyJudge.throttle, LatencyJudge.throttle_ms = 0.02, 2, 400
    try:
        run = _judged_run(tmp_path, latency_server, MANY_MODEL[:12], MANY_BASE[:12], "eval.judge.concurrency=4",
                          "eval.judge.max_retries=2")
        m, _ = run(monkeypatch)
    finally:
        LatencyJudge.latency = 0.05
    assert (m["n"], m["failures"]) == (12, 0) and len(LatencyJudge.arrivals) == 13
    t = LatencyJudge.throttled_at
    # requests already on their way may arrive just after the 429 was sent; none for the rest of its wait
    assert not [a for a in LatencyJudge.arrivals if t + 0.1 < a < t + 0.38]
    assert max(LatencyJudge.arrivals) > t + 0.38


def test_rate_limiter_keeps_to_rpm_and_tpm():
    from clo.eval.judge import RateLimiter

    class Clock:
        t = 0.0

        def __call__(self):
            return self.t

        def sleep(self, s):
            self.t += s

    c = Clock()
    lim = RateLimiter(rpm=120, clock=c, sleep=c.sleep)  # 2 a second, at most 2 at once
    for _ in range(6):
        lim.acquire()
    assert c.t == pytest.approx(2.0)  # 2 at once, then one every 0.5 s

    c = Clock()
    lim = RateLimiter(tpm=6000, clock=c, sleep=c.sleep)  # 100 tokens a second
    assert lim.acquire(250) == 0  # a bucket that is not in debt lets a request go ...
    lim.acquire(10)  # ... but 250 tokens put it 150 in debt: 1.5 s before the next
    assert c.t == pytest.approx(1.5, abs=1e-6)
    lim.settle(estimated=10, actual=210)  # the response used more than estimated: more debt
    lim.acquire(1)
    assert c.t == pytest.approx(3.6, abs=1e-6)

    c = Clock()
    lim = RateLimiter(clock=c, sleep=c.sleep)  # no caps: only pauses
    lim.acquire()
    lim.pause(3.0)
    lim.pause(1.0)  # a shorter pause does not shorten the longer one
    lim.acquire()
    assert c.t == pytest.approx(3.0)


def test_retry_after_headers():
    import email.utils
    import time

    from clo.eval.judge import RETRY_AFTER_MAX_S, estimate_tokens, retry_after

    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after({"retry-after": soon}) <= 30
    assert retry_after({"retry-after": email.utils.formatdate(time.time() - 30, usegmt=True)}) == 0.0
    assert retry_after({"retry-after": "86400"}) == RETRY_AFTER_MAX_S
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None and retry_after(None) is None
    msgs = build_messages("Sag hallo", "hallo", "hi", languages.get("de"))
    assert estimate_tokens(msgs, 128) == sum(len(m["content"].encode()) for m in msgs) // 3 + 8 + 128


def test_the_local_judge_runs_one_request_at_a_time():
    from clo.eval.judge import LocalJudge, judge_items

    assert LocalJudge.max_concurrency == 1
    active, peak = [0], [0]
    lock = threading.Lock()

    class Serial:
        name = "serial"
        max_concurrency = 1

        def __call__(self, messages):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            with lock:
                active[0] -= 1
            return '[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 1}]'

    items = [(str(k), f"i{k}", "a", "b") for k in range(6)]
    got = list(judge_items(Serial(), items, languages.get("en"), seed=0, retries=0, concurrency=8))
    assert [k for k, _ in got] == list(range(6)) and peak[0] == 1
