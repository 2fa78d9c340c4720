"""Table 9: the same answers judged with two prompts (the AlpacaEval task's also_judge_with)."""

import json
from pathlib import Path

from clo.config import load_config
from clo.eval import evaluate
from clo.experiments.config import grid_from_dict, load_grid
from clo.experiments.graph import plan
from clo.io import write_json
from clo.report import write_report

ROOT = Path(__file__).resolve().parents[1]


def test_the_same_answers_judged_with_two_prompts(tmp_path, monkeypatch):
    from clo.testing import tiny_model, tiny_tokenizer

    gen_calls = []

    def answers(model, tok, prompts, **kw):
        gen_calls.append(len(prompts))
        yield list(range(len(prompts))), [f"answer {p.split()[-1]}" for p in prompts]

    monkeypatch.setattr("clo.eval.generation.iter_generate", answers)
    (tmp_path / "instr.json").write_text(json.dumps([{"instruction": f"instruction {k}"} for k in range(4)]))
    (tmp_path / "de.json").write_text(json.dumps([f"Anweisung {k}" for k in range(4)]))
    (tmp_path / "base.json").write_text(json.dumps([{"output": "base"}] * 4))
    seen = []

    def judge(messages, tool=None):
        # AlpacaEval 2's prompt (a function to call): the model's answer always wins; clo's prompt:
        # it always loses
        user = messages[-1]["content"]
        seen.append("alpaca_eval" if tool else "clo")
        if tool:
            m_is_model = user.index("answer") < user.index("base")
            first, second = ("m", "M") if m_is_model else ("M", "m")
            return json.dumps({"ordered_models": [{"model": first, "rank": 1}, {"model": second, "rank": 2}]})
        model_first = user.index("answer") < user.index("base")
        loser, winner = ("model_1", "model_2") if model_first else ("model_2", "model_1")
        return f'[{{"model": "{winner}", "rank": 1}}, {{"model": "{loser}", "rank": 2}}]'

    cfg = load_config(None, ["lang=de", "eval.judge.prompt=alpaca_eval"])
    model = (tiny_model("llama", vocab_size=512), tiny_tokenizer())
    opts = {"instructions_file": str(tmp_path / "instr.json"), "translated_file": str(tmp_path / "de.json"),
            "baseline_outputs": str(tmp_path / "base.json"), "judge": judge}
    m = evaluate("alpacaeval", model, cfg, tmp_path / "out", also_judge_with="clo", **opts)
    assert gen_calls == [4]  # the answers were generated once
    assert m["win_rate"] == 1.0 and m["judge_prompt"].startswith("alpaca_eval@")
    assert m["also_judged"]["clo"]["win_rate"] == 0.0 and m["also_judged"]["clo"]["judge_prompt"] == "clo"
    assert sorted(seen) == ["alpaca_eval"] * 4 + ["clo"] * 4
    recs = json.loads((tmp_path / "out" / "alpacaeval-de.json").read_text())["records"]
    assert [(r["score"], r["also_judged"]["clo"]["score"]) for r in recs] == [(1.0, 0.0)] * 4


def test_table9_in_the_report(tmp_path):
    grid = grid_from_dict({"name": "g", "output_dir": str(tmp_path), "models": ["M"], "langs": ["de"],
                           "methods": ["sft", "clo"], "sizes": [None], "include_base": False,
                           "eval_jobs": [{"task": "alpacaeval", "opts": {"also_judge_with": "clo"}}]})
    write_json(tmp_path / "plan.json", plan(grid))
    write_json(tmp_path / "runs" / "M/de/clo/nall" / "eval" / "alpacaeval_de.done.json", {
        "fingerprint": "0" * 16, "result": {"win_rate": 0.62, "stderr": 0.02, "n": 805,
                                            "judge_prompt": "alpaca_eval@0123abcd", "also_judged": {
                                                "clo": {"win_rate": 0.71, "stderr": 0.015, "n": 805}}}})
    write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    block = md.split("### Table 9", 1)[1].split("\n### ", 1)[0]
    row = next(line for line in block.splitlines() if line.startswith("| M |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["M", "de", "de", "CLO", "alpaca_eval"]
    assert cells[5].startswith("62.0 ± 2.0") and cells[6] == "clo" and cells[7].startswith("71.0 ± 1.5")


def test_the_table9_preset_judges_twice():
    grid = load_grid(ROOT / "configs" / "table9.yaml")
    assert [(j.task, j.opts) for j in grid.eval_jobs] == [("alpacaeval", {"also_judge_with": "clo"})]
    assert grid.base.eval.judge.prompt == "alpaca_eval"
