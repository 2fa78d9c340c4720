"""eval.translator: the evaluation sets translated by a translator of their own (the paper: GPT-4o)."""

import json

from clo.config import load_config
from clo.eval import evaluate


def _translators(monkeypatch, calls):
    from clo.data import translators as T

    def make(tag):
        class Tagging(T.Translator):
            kind = tag

            def fingerprint(self) -> str:
                return f"{tag}/v1"

            def translate_batch(self, texts, src_lang, tgt_lang):
                calls.append(tag)
                return [f"[{tag} {tgt_lang}] {t}" for t in texts]
        return Tagging

    for tag in ("train-mt", "eval-mt"):
        monkeypatch.setitem(T.TRANSLATORS, tag, make(tag))


def test_alpacaeval_instructions_go_through_eval_translator(tmp_path, monkeypatch):
    from clo.testing import tiny_model, tiny_tokenizer

    calls, seen = [], []
    _translators(monkeypatch, calls)

    def echo(model, tok, prompts, **kw):
        seen.extend(prompts)
        yield list(range(len(prompts))), ["x"] * len(prompts)

    monkeypatch.setattr("clo.eval.generation.iter_generate", echo)
    (tmp_path / "instr.json").write_text(json.dumps([{"instruction": f"Name colour {k}."} for k in range(2)]))
    (tmp_path / "base.json").write_text(json.dumps([{"output": "b"}] * 2))
    opts = {"instructions_file": str(tmp_path / "instr.json"), "baseline_outputs": str(tmp_path / "base.json"),
            "judge": lambda messages: '[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 1}]'}
    model = (tiny_model("llama", vocab_size=512), tiny_tokenizer())
    # without eval.translator: data.translator
    evaluate("alpacaeval", model, load_config(None, ["lang=de", "data.translator.kind=train-mt"]), tmp_path / "a",
             **opts)
    assert seen == ["[train-mt de] Name colour 0.", "[train-mt de] Name colour 1."] and set(calls) == {"train-mt"}
    seen.clear()
    calls.clear()
    cfg = load_config(None, ["lang=de", "data.translator.kind=train-mt", "eval.translator.kind=eval-mt"])
    evaluate("alpacaeval", model, cfg, tmp_path / "b", **opts)
    assert seen == ["[eval-mt de] Name colour 0.", "[eval-mt de] Name colour 1."] and set(calls) == {"eval-mt"}
    doc = json.loads((tmp_path / "b" / "alpacaeval-de.json").read_text())
    assert doc["fingerprint"]["inputs"]["eval"]["translator"]["kind"] == "eval-mt"


def test_grid_translates_instructions_with_eval_translator(tmp_path):
    from clo.experiments.graph import instructions_inputs

    cfg = load_config(None, ["lang=de", "eval.translator.kind=openai", "eval.translator.model=gpt-4o"])
    assert instructions_inputs("de", cfg, None, None)["translator"]["model"] == "gpt-4o"
    plain = load_config(None, ["lang=de"])
    assert instructions_inputs("de", plain, None, None)["translator"] == plain.data.translator.model_dump(mode="json")
