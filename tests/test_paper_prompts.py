"""The protocol's named variants: judge prompts (clo, alpaca_eval, paper), the make_partial_leaderboard
function and its parsing, the answer-in-language system prompt."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from clo import languages
from clo.config import load_config
from clo.config_base import ConfigError
from clo.eval import evaluate
from clo.eval import prompts as P
from clo.eval.judge import judge_item, swap_order

# sha256 of alpaca_eval's evaluators_configs/alpaca_eval_gpt4_turbo_fn/alpaca_eval_fn.txt at
# tatsu-lab/alpaca_eval cd543a149df89434d8a54582c0151c0b945c3d20 (computed from that file).
ALPACA_EVAL_FN_SHA256 = "12490d7306fcdcc6d3963ae03ea0d16c043cfbe2f2d10a7ff36762b6c1580b2e"


def test_alpaca_eval_template_is_alpaca_evals_file_character_for_character():
    assert hashlib.sha256(P.ALPACA_EVAL_FN_TEMPLATE.encode("utf-8")).hexdigest() == ALPACA_EVAL_FN_SHA256
    system, user = P.parse_chatml(P.ALPACA_EVAL_FN_TEMPLATE)
    assert system.startswith("You are a highly efficient assistant, who evaluates and rank large language models")
    assert user.startswith("I require a leaderboard for various large language models.")
    assert user.endswith("the model with the highest quality output is ranked first.")
    assert '"model": "m"' in user and '"model": "M"' in user
    assert P.MAKE_PARTIAL_LEADERBOARD["function"]["name"] == "make_partial_leaderboard"


def test_fill_replaces_the_first_occurrence_with_raw_text():
    # braces in an answer are kept as written (no str.format), a second "{output_1}" stays
    got = P.fill('a {instruction} b {output_1} c {output_2} d {output_1}', 'say "{x}"', "1 {output_2}", "2")
    assert got == 'a say "{x}" b 1 2 c {output_2} d {output_1}'


@pytest.mark.parametrize("text,expected", [
    ('{"ordered_models": [{"model": "m", "rank": 1}, {"model": "M", "rank": 2}]}', 1),
    ('{"ordered_models": [{"model": "M", "rank": 1}, {"model": "m", "rank": 2}]}', 2),
    ('{"ordered_models": [{"model": "m", "rank": 1.0}, {"model": "M", "rank": 2.0}]}', 1),
    ('{"ordered_models": [{"model": "m", "rank": 1}, {"model": "M", "rank": 1}]}', 1),  # no ties in alpaca_eval
    ('blah ```json\n{"ordered_models": [{"model": "m", "rank": 2}, {"model": "M", "rank": 1}]}```', 2),
    ('{"ordered_models": "[{\'model\': \'m\', \'rank\': 2}]"}', 2),  # ranking_parser literal_evals a string
    ('{"ordered_models": [{"model": "m", "rank": 3}, {"model": "M", "rank": 1}]}', None),
    ('{"ordered_models": [{"model": "M", "rank": 1}]}', None),
    ('[{"model": "m", "rank": 1}, {"model": "M", "rank": 2}]', None),  # not the function's arguments
    ("m", None),
    ("", None),
])
def test_parse_leaderboard_reads_as_alpaca_eval(text, expected):
    assert P.parse_leaderboard(text) == expected


def _cfg(*overrides):
    return load_config(None, list(overrides)).eval.judge


def test_resolve_variants():
    de, en = languages.get("de"), languages.get("en")
    assert P.resolve(_cfg(), de) is None  # clo: the judge module's own prompt
    ae = P.resolve(_cfg("eval.judge.prompt=alpaca_eval"), de)
    assert (ae.system, ae.user) == P.parse_chatml(P.ALPACA_EVAL_FN_TEMPLATE)
    assert ae.tool == P.MAKE_PARTIAL_LEADERBOARD
    assert P.resolve(_cfg("eval.judge.prompt=alpaca_eval", "eval.judge.function_calling=false"), de).tool is None
    # paper: AlpacaEval's original prompt for English ...
    paper_en = P.resolve(_cfg("eval.judge.prompt=paper"), en)
    assert (paper_en.user, paper_en.digest, paper_en.name) == (ae.user, ae.digest, "paper")  # same text
    # ... and for other languages the text the user supplies, refused without it
    with pytest.raises(ConfigError, match="eval.judge.prompt=paper: the paper's judge prompt for German"):
        P.resolve(_cfg("eval.judge.prompt=paper"), de)
    with pytest.raises(Exception, match="unknown judge prompt 'papers'"):
        _cfg("eval.judge.prompt=papers")


def test_paper_prompt_file_for_other_languages(tmp_path):
    f = tmp_path / "paper_de.txt"
    f.write_text("<|im_start|>system\nS.\n<|im_end|>\n<|im_start|>user\nI: {instruction}\nA: {output_1}\n"
                 "B: {output_2}\nNote on languages.\n<|im_end|>", encoding="utf-8")
    p = P.resolve(_cfg("eval.judge.prompt=paper", f"eval.judge.prompt_file={f}"), languages.get("de"))
    assert p.messages("frage", "eins", "zwei") == [
        {"role": "system", "content": "S."},
        {"role": "user", "content": "I: frage\nA: eins\nB: zwei\nNote on languages."}]
    f.write_text("<|im_start|>user\nno fields\n<|im_end|>", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"paper_de.txt: expected one system and one user message"):
        P.resolve(_cfg("eval.judge.prompt=paper", f"eval.judge.prompt_file={f}"), languages.get("de"))


def test_judge_item_with_the_alpaca_eval_prompt_undoes_the_order():
    prompt = P.resolve(_cfg("eval.judge.prompt=alpaca_eval"), languages.get("ko"))
    calls = []

    def judge(messages, tool=None):
        calls.append((messages, tool))
        user = messages[1]["content"]
        # rank first whichever of m / M holds the model's output
        m_first = user.index("MODEL") < user.index("BASE")
        order = ["m", "M"] if m_first else ["M", "m"]
        return json.dumps({"ordered_models": [{"model": order[0], "rank": 1}, {"model": order[1], "rank": 2}]})

    for item in map(str, range(8)):
        v = judge_item(judge, item, "지시", "MODEL", "BASE", languages.get("ko"), seed=5, retries=0, prompt=prompt)
        assert v["score"] == 1.0 and v["swapped"] == swap_order(5, item)
        assert v["ranking"] == (2 if v["swapped"] else 1)
    messages, tool = calls[0]
    assert tool == P.MAKE_PARTIAL_LEADERBOARD
    assert messages[0] == {"role": "system", "content": prompt.system}
    assert '"instruction": """지시""",' in messages[1]["content"]
    assert {c[0][1]["content"].index("MODEL") < c[0][1]["content"].index("BASE") for c in calls} == {True, False}


class LeaderboardJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that answers through make_partial_leaderboard: the output
    holding WIN ranks first."""

    requests: ClassVar[list] = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        LeaderboardJudge.requests.append(body)
        user = body["messages"][-1]["content"]
        m_out = user.split('"model": "m",')[1].split('"model": "M",')[0]
        first = "m" if "WIN" in m_out else "M"
        args = {"ordered_models": [{"model": first, "rank": 1}, {"model": "M" if first == "m" else "m", "rank": 2}]}
        msg = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "make_partial_leaderboard", "arguments": json.dumps(args)}}]}
        data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "tool_calls", "message": msg}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def leaderboard_server():
    LeaderboardJudge.requests = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), LeaderboardJudge)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()
    th.join(timeout=10)


def test_alpacaeval_with_the_alpaca_eval_prompt_end_to_end(leaderboard_server, tmp_path, monkeypatch):
    from clo.testing import tiny_model, tiny_tokenizer

    model_out, base_out = ["WIN a", "LOSE b", "WIN c", "WIN d"], ["LOSE", "WIN", "LOSE", "LOSE"]

    def answers(model, tok, prompts, **kw):
        yield list(range(len(prompts))), [model_out[int(p.split()[-1])] for p in prompts]

    monkeypatch.setattr("clo.eval.generation.iter_generate", answers)
    (tmp_path / "instr.json").write_text(json.dumps([{"instruction": f"instruction {k}"} for k in range(4)]))
    (tmp_path / "de.json").write_text(json.dumps([f"Anweisung {k}" for k in range(4)]))
    (tmp_path / "base.json").write_text(json.dumps([{"output": o} for o in base_out]))
    opts = {"instructions_file": str(tmp_path / "instr.json"), "translated_file": str(tmp_path / "de.json"),
            "baseline_outputs": str(tmp_path / "base.json")}
    model = (tiny_model("llama", vocab_size=512), tiny_tokenizer())
    cfg = load_config(None, [f"eval.judge.base_url={leaderboard_server}", "eval.judge.api_key_env=CLO_NO_KEY",
                             "eval.judge.max_retries=0", "eval.judge.prompt=alpaca_eval",
                             "eval.judge.model=gpt-4o-2024-08-06", "lang=de"])
    m = evaluate("alpacaeval", model, cfg, tmp_path / "out", **opts)
    assert (m["n"], m["wins"], m["losses"], m["win_rate"]) == (4, 3, 1, 0.75)
    assert m["judge_prompt"].startswith("alpaca_eval@")
    req = LeaderboardJudge.requests[0]
    assert req["model"] == "gpt-4o-2024-08-06" and req["temperature"] == 0.0
    assert req["tools"] == [P.MAKE_PARTIAL_LEADERBOARD]
    assert req["tool_choice"] == {"type": "function", "function": {"name": "make_partial_leaderboard"}}
    doc = json.loads((tmp_path / "out" / "alpacaeval-de.json").read_text())
    assert doc["fingerprint"]["inputs"]["eval"]["judge"]["prompt"] == "alpaca_eval"
    # the verdicts are cached under the prompt's digest: a rerun asks nothing
    before = len(LeaderboardJudge.requests)
    assert evaluate("alpacaeval", model, cfg, tmp_path / "out", **opts) == m
    assert len(LeaderboardJudge.requests) == before


def test_answer_in_language_system_prompt_reaches_every_answer(tmp_path, monkeypatch):
    from clo.eval.generation import encode_with_system
    from clo.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    seen = []

    def answers(model, tok_, prompts, **kw):
        seen.append([kw["encode"](tok_, p) for p in prompts] if "encode" in kw else None)
        yield list(range(len(prompts))), ["Antwort"] * len(prompts)

    monkeypatch.setattr("clo.eval.generation.iter_generate", answers)
    (tmp_path / "instr.json").write_text(json.dumps([{"instruction": "instruction 0"}]))
    (tmp_path / "de.json").write_text(json.dumps(["Anweisung 0"]))
    (tmp_path / "base.json").write_text(json.dumps([{"output": "x"}]))
    opts = {"instructions_file": str(tmp_path / "instr.json"), "translated_file": str(tmp_path / "de.json"),
            "baseline_outputs": str(tmp_path / "base.json")}
    model = (tiny_model("llama", vocab_size=512), tok)

    def judge(messages, tool=None):
        return '[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 2}]'

    for setting in ("none", "answer-in-language"):
        cfg = load_config(None, ["lang=de", f"eval.system_prompt={setting}"])
        m = evaluate("alpacaeval", model, cfg, tmp_path / setting, judge=judge, **opts)
        assert m["system_prompt"] == setting
    assert seen[0] is None
    want = encode_with_system(tok, "Anweisung 0", "Bitte antworte auf Deutsch.")
    assert seen[1] == [want]
    text = tok.decode(want)
    assert "Bitte antworte auf Deutsch." in text and text.index("Bitte antworte") < text.index("Anweisung 0")
    with pytest.raises(Exception, match="unknown system prompt 'always'"):
        load_config(None, ["eval.system_prompt=always"])


@pytest.mark.parametrize("preset", ["configs/paper.yaml", "configs/sizes.yaml", "configs/ablations.yaml"])
def test_paper_presets_name_the_judge_snapshot_and_prompt(preset):
    from pathlib import Path

    from clo.experiments.config import load_grid

    root = Path(__file__).resolve().parents[1]
    grid = load_grid(root / preset)
    judge = grid.base.eval.judge
    assert (judge.model, judge.prompt, judge.function_calling) == ("gpt-4o-2024-08-06", "alpaca_eval", True)
    assert (grid.base.train.nll_reduction, grid.base.train.batch_unit) == ("token", "unit")
    assert grid.base.data.mmmlu_format_items == 10
    if preset == "configs/paper.yaml":  # Table 3: target language and English
        assert {(j.task, j.lang) for j in grid.eval_jobs if j.task == "mmmlu"} == {("mmmlu", "tgt"), ("mmmlu", "en")}
    single = load_config(str(root / "configs/train/paper.yaml"), [])
    assert (single.eval.judge.model, single.eval.judge.prompt) == ("gpt-4o-2024-08-06", "alpaca_eval")
    assert single.data.mmmlu_format_items == 10


def test_a_changed_prompt_text_is_a_changed_evaluation(tmp_path, monkeypatch):
    """An MMMLU instruction of another text (a language file's, e.g. the paper's Table 6) does not
    reuse the answers given to the old one: the cache names the differing prompt text."""
    from clo import languages
    from clo.eval.core import CacheMismatch
    from clo.testing import tiny_model, tiny_tokenizer

    (tmp_path / "mmlu").mkdir()
    (tmp_path / "mmlu" / "mmlu_DE-DE.csv").write_text(
        ",Question,A,B,C,D,Answer,Subject\n0,Q0,a,b,c,d,A,anatomy\n", encoding="utf-8")
    monkeypatch.setattr("clo.eval.generation.iter_generate",
                        lambda model, tok, prompts, **kw: iter([(list(range(len(prompts))), ["Antwort: A"])]))
    model = (tiny_model("llama", vocab_size=512), tiny_tokenizer())
    cfg = load_config(None, [f"eval.data_dir={tmp_path}", "lang=de"])
    evaluate("mmmlu", model, cfg, tmp_path / "out")
    de = languages.get("de")
    other = "Beantworte die Frage. Letzte Zeile: 'Antwort: $LETTER' mit LETTER aus ABCD."
    from dataclasses import replace

    monkeypatch.setattr("clo.languages.get", lambda code: replace(de, mmmlu_instruction=other) if code == "de"
                        else languages._REGISTRY[code.lower()])
    with pytest.raises(CacheMismatch, match="prompts.instruction"):
        evaluate("mmmlu", model, cfg, tmp_path / "out")
