"""``clo.train(model=..., tokenizer=..., train_dataset=...)``: what a TRL user has (a model object
or id, a tokenizer, a ``datasets.Dataset`` or a list of records) in, the result object out; the
same run as the file-based entry point, resumable, and bad arguments named."""

import datasets
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import clo
from clo.api import APIError
from clo.config import config_from_dict
from clo.io import write_jsonl

OPTS = {"lr": 5e-3, "min_lr": 5e-3, "batch_size": 4, "eval_every": 1, "max_length": 64, "epochs": 1}


@pytest.fixture
def objects(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("CLO_CACHE", str(tmp_path / "cache"))
    return AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)


def test_model_object_and_a_dataset_train_as_the_file_api_does(objects, tiny_llama, quadruples, tmp_path):
    model, tok = objects
    rows, val = quadruples(8, 0), quadruples(4, 1, prefix="v")
    for r in rows:  # a TRL user's rows: no ids, no language (given once)
        del r["id"], r["tgt_lang"]
    ds = datasets.Dataset.from_list(rows)
    res = clo.train(model=model, tokenizer=tok, train_dataset=ds, eval_dataset=val, lang="de",
                    output_dir=tmp_path / "api", method="clo", **OPTS)
    assert res.metrics["finished"] and res.best_checkpoint.is_dir() and res.output_dir == tmp_path / "api"
    assert (res.best_checkpoint / "config.json").is_file() or (res.best_checkpoint / "trained.safetensors").is_file()
    # The file-based entry point on the same weights and records gives the same losses.
    files = tmp_path / "files"
    write_jsonl(files / "train.jsonl", [{"id": f"train_dataset-{i}", "source": "python", "tgt_lang": "de", **r}
                                        for i, r in enumerate(rows)])
    write_jsonl(files / "val.jsonl", [{**r, "source": "python"} for r in val])
    cfg = config_from_dict({"model": str(tiny_llama), "lang": "de", "train": {"method": "clo", **OPTS}})
    ref = clo.train.train(cfg, files / "train.jsonl", files / "val.jsonl", tmp_path / "ref")
    for key in ("best_val_loss", "steps"):
        assert res.metrics[key] == pytest.approx(ref.metrics[key], rel=1e-5), key
    # Called again: the same saved model and data, so the finished run is returned, not redone.
    again = clo.train(model=model, tokenizer=tok, train_dataset=ds, eval_dataset=val, lang="de",
                      output_dir=tmp_path / "api", method="clo", **OPTS)
    assert again.best_checkpoint == res.best_checkpoint and again.metrics == res.metrics


def test_a_model_id_and_a_list_of_records(tiny_llama, quadruples, tmp_path, monkeypatch):
    monkeypatch.setenv("CLO_CACHE", str(tmp_path / "cache"))
    res = clo.train(str(tiny_llama), quadruples(8, 0), method="sft", output_dir=tmp_path / "sft", **OPTS)
    assert res.metrics["finished"] and res.metrics["steps"] == 4  # 8 records x 2 languages / batch 4
    assert not (tmp_path / "cache" / "python" / "models").exists()  # a spec is used as it is


def test_bad_arguments_are_named(objects, quadruples, tmp_path):
    model, tok = objects
    rows = quadruples(3, 0)
    with pytest.raises(APIError, match="tokenizer: required with a model object"):
        clo.train(model=model, train_dataset=rows, output_dir=tmp_path / "x")
    bad = [dict(r) for r in rows]
    del bad[1]["x_tgt"]
    with pytest.raises(APIError, match=r"^train_dataset\[1\]\.x_tgt: missing field$"):
        clo.train(model=model, tokenizer=tok, train_dataset=bad, output_dir=tmp_path / "x")
    with pytest.raises(APIError, match=r"train_dataset\[0\]\.tgt_lang: missing; give lang='xx'"):
        clo.train(model=model, tokenizer=tok, train_dataset=[{k: v for k, v in rows[0].items() if k != "tgt_lang"}],
                  output_dir=tmp_path / "x")
    with pytest.raises(APIError, match="train_dataset: expected a datasets.Dataset, a list of records"):
        clo.train(model=model, tokenizer=tok, train_dataset={"x_en": "a"}, output_dir=tmp_path / "x")
    with pytest.raises(APIError, match="model: expected a transformers PreTrainedModel"):
        clo.train(model=42, tokenizer=tok, train_dataset=rows, output_dir=tmp_path / "x")
    with pytest.raises(APIError, match=r"^betta=0\.1: train\.betta: unknown key; did you mean train\.beta\?$"):
        clo.train(model=model, tokenizer=tok, train_dataset=rows, output_dir=tmp_path / "x", betta=0.1)
    assert not (tmp_path / "x").exists()
