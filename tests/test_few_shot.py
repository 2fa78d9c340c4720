"""Few-shot examples for any language (``data.translator.few_shot``: a YAML/JSON mapping, JSON
lines of parallel examples, or the mapping in the config) and the check that a language pair has
them, run before any model loads."""

import json
import time

import pytest

from clo.cli import main as clo_main
from clo.config import load_config
from clo.data.config import TranslatorConfig
from clo.data.translators import causal

FR_YAML = """\
en:
  - Where is the train station?
  - I would like a coffee, please.
fr:
  - Où est la gare ?
  - Je voudrais un café, s'il vous plaît.
"""


def test_few_shot_from_yaml_jsonl_and_the_config(tmp_path):
    y = tmp_path / "fr.yaml"
    y.write_text(FR_YAML, encoding="utf-8")
    j = tmp_path / "fr.jsonl"
    j.write_text('{"en": "Where is the train station?", "fr": "Où est la gare ?"}\n\n'
                 '{"en": "I would like a coffee, please.", "fr": "Je voudrais un café, s\'il vous plaît."}\n',
                 encoding="utf-8")
    inline = {"en": ["Where is the train station?", "I would like a coffee, please."],
              "fr": ["Où est la gare ?", "Je voudrais un café, s'il vous plaît."]}
    expected = ("Translate English to French.\n\n"
                "English: Where is the train station?\nFrench: Où est la gare ?\n\n"
                "English: I would like a coffee, please.\nFrench: Je voudrais un café, s'il vous plaît.\n\n"
                "English: Good luck!\nFrench:")
    for spec in (str(y), str(j), inline):
        assert causal.few_shot_prompt("Good luck!", "en", "fr", few_shot=causal.load_few_shot(spec)) == expected
    # Through the config, both spellings validate.
    assert load_config(None, [f"data.translator.few_shot={y}"]).data.translator.few_shot == str(y)
    cfg = load_config(None, ["data.translator.few_shot={en: [Hi.], fr: [Salut.]}"])
    assert cfg.data.translator.few_shot == {"en": ["Hi."], "fr": ["Salut."]}
    # The built-in sets stay; a user's set of a built-in language replaces it.
    sets = causal.few_shot_sets({"de": ["Guten Tag."], "en": ["Good day."]})
    assert sets["de"] == ("Guten Tag.",) and sets["zh"] == causal.FEW_SHOT["zh"]


def test_bad_few_shot_files_name_file_and_line(tmp_path):
    j = tmp_path / "bad.jsonl"
    j.write_text('{"en": "A.", "fr": "A."}\n{"en": "B."}\n', encoding="utf-8")
    with pytest.raises(causal.TranslationError, match=r"bad\.jsonl:2: languages \['en'\], but line 1 has "
                                                      r"\['en', 'fr'\]"):
        causal.load_few_shot(str(j))
    j.write_text('{"en": "A.", "fr": \n', encoding="utf-8")
    with pytest.raises(causal.TranslationError, match=r"bad\.jsonl:1: malformed JSON"):
        causal.load_few_shot(str(j))
    y = tmp_path / "bad.yaml"
    y.write_text("fr: Bonjour.\n", encoding="utf-8")
    with pytest.raises(causal.TranslationError, match=r"bad\.yaml: field 'fr': expected a non-empty list"):
        causal.load_few_shot(str(y))
    with pytest.raises(causal.TranslationError, match=r"missing\.yaml: no such few-shot file"):
        causal.load_few_shot(str(tmp_path / "missing.yaml"))
    # Unequal numbers of sentences cannot be paired.
    with pytest.raises(causal.TranslationError, match=r"3 'en' sentences but 1 'fr' ones"):
        causal.check_few_shot("en", "fr", {"fr": ["Bonjour."]})


def test_a_missing_few_shot_set_fails_before_any_model_loads(tmp_path, monkeypatch, capsys):
    import clo.models

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the few-shot check")

    monkeypatch.setattr(clo.models, "load_model", no_model)
    monkeypatch.setattr(clo.models, "load_tokenizer", no_model)
    src = tmp_path / "sg.json"
    src.write_text(json.dumps([{"conversations": [{"from": "human", "value": "Hi?"},
                                                  {"from": "gpt", "value": "Hello!"}]}]), encoding="utf-8")
    argv = ["data", "build", "--source", "sharegpt", "--path", str(src), "--lang", "fr", "--n", "8",
            "--output", str(tmp_path / "out")]
    assert clo_main(argv) == 2  # once for clo's own imports, which a test process may not have yet
    capsys.readouterr()
    t0 = time.perf_counter()
    rc = clo_main(argv)
    elapsed = time.perf_counter() - t0  # no model, no tokenizer, no source read: well under a second
    err = capsys.readouterr().err
    assert rc == 2 and elapsed < 1.0
    assert "no few-shot examples for 'fr'" in err and "data.translator.few_shot" in err
    assert not (tmp_path / "out").exists()  # nothing written either


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory):
    from clo.testing import tiny_model, tiny_tokenizer

    d = tmp_path_factory.mktemp("causal")
    tiny_model("llama", vocab_size=512).save_pretrained(d)
    tiny_tokenizer(chat_template=False).save_pretrained(d)
    return d


def test_the_translator_prompts_with_the_users_examples(tiny_causal, tmp_path):
    y = tmp_path / "fr.yaml"
    y.write_text(FR_YAML, encoding="utf-8")
    base = {"kind": "causal", "model": str(tiny_causal), "device": "cpu", "max_new_tokens_ratio": 1.0,
            "max_new_tokens_extra": 2}
    tr = causal.CausalTranslator(TranslatorConfig(**base, few_shot=str(y)))
    out = tr.translate_batch(["Good luck!"], "en", "fr")
    assert len(out) == 1 and "\n" not in out[0]
    ids, _ = tr._prefix("en", "fr")
    assert "French: Où est la gare ?" in tr.tokenizer.decode(ids[0], skip_special_tokens=True)
    # Other examples make other translations: the cache key (fingerprint) follows their content.
    plain = causal.CausalTranslator(TranslatorConfig(**base))
    other = causal.CausalTranslator(TranslatorConfig(**base, few_shot={"en": ["A."], "fr": ["B."]}))
    same = causal.CausalTranslator(TranslatorConfig(**base, few_shot=causal.load_few_shot(str(y))))
    assert len({plain.fingerprint(), tr.fingerprint(), other.fingerprint()}) == 3
    assert same.fingerprint() == tr.fingerprint()


def test_clo_run_dry_run_checks_the_few_shot_examples(tmp_path, shared_data):
    from clo.experiments import preflight as pf
    from clo.experiments.config import grid_from_dict

    tree = {"name": "g", "output_dir": str(tmp_path / "g"), "models": ["smollm2-135m-instruct"], "langs": ["fr"],
            "methods": ["sft"], "sizes": [None], "eval_jobs": [],
            "base": {"data": {"source": "alpaca", "path": str(shared_data / "sft_en" / "alpaca_en_demo.json"),
                              "n": 8, "subsets": []}}}
    res = pf.preflight(grid_from_dict(tree, "g.yaml"), "g.yaml", checks=["translator"])
    assert [str(f) for f in res.errors] == [
        "g.yaml: base.data.translator.few_shot: the causal translator has no few-shot examples for 'fr': give "
        "parallel sentences with data.translator.few_shot: FILE.yaml ({en: [...], fr: [...]}) or FILE.jsonl "
        '({"en": ..., "fr": ...} per line); built in: de, en, id, ko, sw, yo, zh']
    tree["base"]["data"]["translator"] = {"few_shot": {"en": ["Hi."], "fr": ["Salut."]}}
    assert not pf.preflight(grid_from_dict(tree, "g.yaml"), "g.yaml", checks=["translator"]).errors
