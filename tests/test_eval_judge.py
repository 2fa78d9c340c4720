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


class ScriptedJudge(BaseHTTPRequestHandler):
    """Ranks first the output containing WIN; TIE in both: tie; GARBAGE: no JSON; FLAKY: no JSON the
    first time it sees an instruction."""

    requests: ClassVar[list] = []
    seen: ClassVar[dict] = {}

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        ScriptedJudge.requests.append(body)
        seg1 = user.split('"model_1": ')[1].split('"model_2": ')[0]
        seg2 = user.split('"model_2": ')[1].split("## Your task")[0]
        instr = user.split('{"instruction": ')[1].split("}")[0]
        first_time = instr not in ScriptedJudge.seen
        ScriptedJudge.seen[instr] = True
        if "GARBAGE" in user or ("FLAKY" in user and first_time):
            content = "Both answers have merits; I cannot decide."
        elif "TIE" in seg1 and "TIE" in seg2:
            content = '[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 1}]'
        else:
            w = "model_1" if "WIN" in seg1 else "model_2"
            l = "model_2" if w == "model_1" else "model_1"
            content = f"Ranking:\n```json\n[{{\"model\": \"{w}\", \"rank\": 1}}, {{\"model\": \"{l}\", \"rank\": 2}}]\n```"
        out = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content}}],
               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def judge_server():
    ScriptedJudge.requests, ScriptedJudge.seen = [], {}
    srv = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedJudge)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


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

    # verdicts are cached: a rerun asks the judge nothing
    before = len(ScriptedJudge.requests)
    assert evaluate("alpacaeval", model, cfg, tmp_path / "out", **opts) == m
    assert len(ScriptedJudge.requests) == before


def test_parse_ranking_variants():
    assert parse_ranking('[{"model": "model_1", "rank": 2}, {"model": "model_2", "rank": 1}]') == 2
    assert parse_ranking("[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]") == 1
    assert parse_ranking('[{"model": "model_2", "rank": 1}, {"model": "model_1", "rank": 1}]') == 0
    assert parse_ranking('[{"model": "model_1", "rank": 1}]') is None
    assert parse_ranking("model_1 is better") is None
    assert parse_ranking('[{"model": "model_3", "rank": 1}, {"model": "model_2", "rank": 2}]') is None


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
    from clo.data import translate as T
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
