"""Judges that reason first: the reasoning block is removed before the ranking is read; a run
with failed judgments says over how many items its win rate is, and exits non-zero unless told."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clo.eval.judge import parse_ranking, strip_reasoning

RANK_1 = '[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 2}]'
RANK_2 = '[{"model": "model_1", "rank": 2}, {"model": "model_2", "rank": 1}]'


@pytest.mark.parametrize("text,expected", [
    (f"<think>model_2 is shorter, but model_1 answers. {RANK_2}?</think>\n\n{RANK_1}", 1),
    (f"<think>\nFirst...\n</think>\n```json\n{RANK_2}\n```", 2),
    (f"<thinking>Compare.</thinking>{RANK_1}", 1),
    (f"<reasoning>Both fine.</reasoning>\n{RANK_2}\n", 2),
    (f"<THINK>upper case</THINK> {RANK_1}", 1),
    (f"<think>a</think><reflection>b</reflection>{RANK_2}", 2),
    # The chat template opened the block in the prompt: only its end comes back.
    (f"The user wants a ranking. {RANK_2} would be wrong.\n</think>\n\n{RANK_1}", 1),
])
def test_reasoning_blocks_are_removed_before_the_ranking_is_read(text, expected):
    assert parse_ranking(text) == expected


@pytest.mark.parametrize("text", [
    # Cut off by max_tokens while thinking: the ranking inside is the judge's draft, not its answer.
    f"<think>I would say {RANK_1} but let me check",
    # A ranking inside the reasoning only.
    f"<think>{RANK_1}</think>",
    f"<think>{RANK_1}</think> model_1 is better.",
])
def test_no_ranking_outside_the_reasoning_is_no_verdict(text):
    assert parse_ranking(text) is None


def test_strip_reasoning_keeps_the_answer():
    assert strip_reasoning("<think>x</think>answer") == "answer"
    assert strip_reasoning("answer without reasoning") == "answer without reasoning"
    assert strip_reasoning("x</think>answer") == "answer"
    assert strip_reasoning("answer<think>cut") == "answer"


class ThinkingJudge(BaseHTTPRequestHandler):
    """Thinks first, then ranks first the output containing WIN; answers FAIL with thinking only."""

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        seg1 = user.split('"model_1": ')[1].split('"model_2": ')[0]
        seg2 = user.split('"model_2": ')[1].split("## Your task")[0]
        if "FAIL" in seg1 + seg2:
            content = "<think>I keep going back and forth between"
        else:
            content = f"<think>Let me compare. Maybe {RANK_2}.</think>\n\n{RANK_1 if 'WIN' in seg1 else RANK_2}"
        data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def thinking_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), ThinkingJudge)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()
    th.join(timeout=10)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from clo.testing import tiny_model, tiny_tokenizer

    d = tmp_path_factory.mktemp("judge-model")
    tiny_model("llama", vocab_size=512).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


def _eval(tmp_path, server, tiny_dir, model_out, base_out, monkeypatch, *extra):
    from clo.cli import main

    def answers(model, tok, prompts, **kw):
        yield list(range(len(prompts))), [model_out[int(p.split()[-1])] for p in prompts]

    monkeypatch.setattr("clo.eval.generation.iter_generate", answers)
    monkeypatch.delenv("CLO_TEST_JUDGE_KEY", raising=False)
    (tmp_path / "instr.json").write_text(json.dumps(
        [{"instruction": f"instruction {k}", "output": b, "generator": "ref", "dataset": "t"}
         for k, b in enumerate(base_out)]))
    return main(["eval", "alpacaeval", "--model", str(tiny_dir), "--lang", "en", "--no-progress",
                 "--instructions-file", str(tmp_path / "instr.json"), "--output", str(tmp_path / "out"),
                 "--set", f"eval.judge.base_url={server}", "--set", "eval.judge.api_key_env=CLO_TEST_JUDGE_KEY",
                 "--set", "eval.judge.max_retries=0", "--set", "eval.judge.retries=1", *extra])


def test_a_thinking_judge_judges_every_item(thinking_server, tiny_dir, tmp_path, monkeypatch, capsys):
    rc = _eval(tmp_path, thinking_server, tiny_dir, ["WIN a", "LOSE b", "WIN c"], ["x", "WIN y", "z"], monkeypatch)
    assert rc == 0
    m = json.loads(capsys.readouterr().out)
    assert (m["n"], m["wins"], m["losses"], m["failures"]) == (3, 2, 1, 0)
    assert m["win_rate"] == pytest.approx(2 / 3)
    md = (tmp_path / "out" / "alpacaeval-en.md").read_text()
    assert "win rate 66.7 ± 33.3 % (n=3 of 3 items)" in md


def test_failed_judgments_exit_non_zero_unless_allowed(thinking_server, tiny_dir, tmp_path, monkeypatch, capsys):
    model_out, base_out = ["WIN a", "FAIL b", "LOSE c", "WIN d"], ["x", "y", "WIN z", "w"]
    assert _eval(tmp_path, thinking_server, tiny_dir, model_out, base_out, monkeypatch) == 3
    out = capsys.readouterr()
    m = json.loads(out.out)
    assert (m["n"], m["failures"], m["win_rate"]) == (3, 1, pytest.approx(2 / 3))
    err = [ln for ln in out.err.splitlines() if ln.startswith("clo eval:")]
    assert len(err) == 1 and "1 judgment(s) failed" in err[0] and "over 3 items only" in err[0]
    assert "--allow-failed-judgments" in err[0]
    md = (tmp_path / "out" / "alpacaeval-en.md").read_text()
    assert "(n=3 of 4 items; 1 judgment failed, judged again on the next run)" in md
    assert _eval(tmp_path, thinking_server, tiny_dir, model_out, base_out, monkeypatch,
                 "--allow-failed-judgments") == 0
