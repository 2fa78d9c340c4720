import csv
import json
from pathlib import Path

import pytest

from clo.config import load_config
from clo.eval import evaluate
from clo.eval import fidelity as fd
from clo.eval import lcb_metrics as lcb
from clo.testing import tiny_model, tiny_tokenizer

KO_RESPONSES = [
    "안녕하세요 저는 오늘 학교에 갑니다.\n저는 친구와 함께 점심을 먹었습니다!",      # passes both
    "안녕하세요 저는 오늘 학교에 갑니다\nI went to the school with my friends today",  # line error
    "저는 오늘 computer 수업을 들었습니다 정말 재미있었어요",                        # word error
    "네, 좋아요!",                                                              # < 5 tokens: skipped
    "Hello",                                                                   # skipped
]


def test_english_word_list_filter(shared_data):
    words = lcb.load_english_words(shared_data / "language_confusion" / "words")
    assert "computer" in words and "school" in words
    assert "the" not in words  # 3 letters or fewer are not counted
    assert not any(w != w.lower() for w in words)


def _scripted(responses):
    def gen(model, tok, prompts, **kw):
        yield list(range(len(prompts))), [responses[i] for i in range(len(prompts))]
    return gen


def test_confusion_task_korean(shared_data, tmp_path, monkeypatch):
    monkeypatch.setattr("clo.eval.generation.iter_generate", _scripted(KO_RESPONSES))
    cfg = load_config(None, [f"eval.data_dir={shared_data}", "lang=ko"])
    m = evaluate("confusion", (tiny_model("llama", vocab_size=512), tiny_tokenizer()), cfg, tmp_path, limit=5)
    assert m["metric"] == "lcb" and m["split"] == "monolingual" and m["lid_model"] == "lid.176.ftz"
    assert m["n"] == 5 and m["kept"] == 3
    assert m["lpr"] == pytest.approx(2 / 3) and m["wpr"] == pytest.approx(0.5)
    assert m["lcpr"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))  # 4/7
    assert m["acc"] == pytest.approx(2.5 / 3)
    assert m["per_source"]["native_prompts"]["lpr"] == m["lpr"]
    # clo's own language ID, named apart, agrees here
    assert m["clo_langid"]["lpr"] == pytest.approx(2 / 3) and m["clo_langid"]["wpr"] == pytest.approx(0.5)
    recs = json.loads((tmp_path / "confusion-ko.json").read_text())["records"]
    assert recs[0]["source"] == "native_prompts" and recs[0]["language"] == "ko" and recs[0]["task"] == "monolingual"
    assert [r["skipped"] for r in recs] == [False, False, False, True, True]
    assert [x["lang"] for x in recs[1]["lines"]] == ["ko", "en"]


def test_confusion_never_pools_the_two_tasks(shared_data, tmp_path, monkeypatch):
    # monolingual prompts come first (Korean answers), then cross-lingual ones (a Korean and an
    # English line: a line error)
    monkeypatch.setattr("clo.eval.generation.iter_generate", _scripted([KO_RESPONSES[0]] * 3 + [KO_RESPONSES[1]] * 3))
    cfg = load_config(None, [f"eval.data_dir={shared_data}", "lang=ko"])
    model = (tiny_model("llama", vocab_size=512), tiny_tokenizer())
    m = evaluate("confusion", model, cfg, tmp_path, limit=3, split="all")  # limit: per task
    assert "lpr" not in m and m["n"] == 6
    mono, cross = m["monolingual"], m["crosslingual"]
    assert mono["lpr"] == 1.0 and mono["n"] == 3 and list(mono["per_source"]) == ["native_prompts"]
    assert cross["lpr"] == 0.0 and cross["n"] == 3 and list(cross["per_source"]) == ["complex_prompts"]
    # the benchmark's table from the result file: one per task
    outs = lcb.read_outputs(tmp_path / "confusion-ko-all.json")
    table = lcb.score_outputs(outs, english_words=lcb.load_english_words(
        shared_data / "language_confusion" / "words"))
    assert sorted(t for t, _ in table) == ["crosslingual", "monolingual"]
    assert {t: v[("all", "all")]["lpr"] for (t, _), v in table.items()} == {"monolingual": 1.0, "crosslingual": 0.0}
    monkeypatch.setattr("clo.eval.generation.iter_generate", _scripted([KO_RESPONSES[1]] * 3))
    m2 = evaluate("confusion", model, cfg, tmp_path, limit=3, split="crosslingual")
    assert m2["lpr"] == 0.0 and (tmp_path / "confusion-ko-crosslingual.json").is_file()


def test_confusion_task_reproduces_the_benchmark_code(shared_data, tmp_path, monkeypatch):
    # published outputs of command-r (tests/fixtures/lcb) as the responses; the benchmark's own
    # code gave the expected row
    fx = Path(__file__).parent / "fixtures" / "lcb"
    with (fx / "outputs_sample.csv").open(encoding="utf-8", newline="") as fh:
        outs = [r["completion"] for r in csv.DictReader(fh)
                if (r["model"], r["task"], r["source"], r["language"]) == ("command-r", "monolingual",
                                                                          "aya_human_annotated", "zh")]
    want = next(e for e in json.loads((fx / "lcb_metrics.json").read_text(encoding="utf-8"))
                if (e["model"], e["task"], e["source"], e["language"]) == ("command-r", "monolingual",
                                                                          "aya_human_annotated", "zh"))
    monkeypatch.setattr("clo.eval.generation.iter_generate", _scripted(outs))
    cfg = load_config(None, [f"eval.data_dir={shared_data}", "lang=zh"])
    m = evaluate("confusion", (tiny_model("llama", vocab_size=512), tiny_tokenizer()), cfg, tmp_path,
                 limit=len(outs))
    got = m["per_source"]["aya_human_annotated"]
    assert (got["acc"], got["lpr"], got["wpr"]) == pytest.approx((want["acc"], want["lpr"], want["wpr"]), abs=1e-9)
    assert (m["acc"], m["lpr"], m["wpr"]) == (got["acc"], got["lpr"], got["wpr"])  # the only source


def test_fidelity_task(tmp_path, monkeypatch):
    responses = [
        "Berlin ist die Hauptstadt von Deutschland und hat viele Museen.",
        "Ich habe heute mit meinen Freunden im Park Fußball gespielt.",
        "The capital of Germany is Berlin, which has many museums.",
        "12345 !!!",
    ]
    monkeypatch.setattr("clo.eval.generation.iter_generate", _scripted(responses))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "x_tgt": f"Frage {i}"}) + "\n" for i in range(4)))
    cfg = load_config(None, ["lang=de"])
    m = evaluate("fidelity", (tiny_model("llama", vocab_size=512), tiny_tokenizer()), cfg, tmp_path,
                 prompts_file=str(prompts))
    assert m == {"rate": 0.5, "n": 4, "per_language": {"de": 0.5, "en": 0.25, "none": 0.25},
                 "echo_rate": 0.0, "rate_excluding_echoes": 0.5, "n_excluding_echoes": 4}
    recs = json.loads((tmp_path / "fidelity-de.json").read_text())["records"]
    assert [r["prompt"] for r in recs] == [f"Frage {i}" for i in range(4)]
    assert [r["detected"] for r in recs] == ["de", "de", "en", None]


def test_prompts_file_errors(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"x_tgt": "a"}\n{"other": 1}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: expected a string or an object with one of the fields"):
        fd.load_prompts(bad)
    with pytest.raises(ValueError, match="unknown prompts format '.yaml'"):
        (tmp_path / "p.yaml").write_text("x")
        fd.load_prompts(tmp_path / "p.yaml")
