"""Several target languages in one run (``lang: [de, sw]``): records, data build, the loss by hand,
the sequences of an example in one batch, per-language metrics, the grid and its report."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clo.config import config_from_dict
from clo.data.records import (
    MultilingualRecord,
    RecordError,
    read_multilingual,
    read_records,
    write_multilingual,
)
from clo.train import methods
from clo.train.data import encode_records, load_dataset, multilingual_keys
from clo.train.losses import CL_LOSSES, REFERENCE_FREE, clo_loss, clo_multi_loss

REPO = Path(__file__).resolve().parents[1]
EN = ["the", "cat", "dog", "house", "red", "blue", "runs", "sleeps", "what", "is"]
DE = ["der", "die", "das", "Katze", "Hund", "Haus", "rot", "blau", "läuft", "Frage"]
SW = ["mbwa", "paka", "nyumba", "nyekundu", "bluu", "anaruka", "swali", "jibu", "hili", "mvivu"]


def _multi_rows(prefix: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    s = lambda ws, k: " ".join(rng.choice(ws) for _ in range(k))
    return [{"id": f"{prefix}{i}", "source": "test", "tgt_langs": ["de", "sw"], "x_en": s(EN, 4), "y_en": s(EN, 5),
             "tgt": {"de": {"x_tgt": s(DE, 4), "y_tgt": s(DE, 6)}, "sw": {"x_tgt": s(SW, 4), "y_tgt": s(SW, 5)}},
             "meta": {}} for i in range(n)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workdir(tiny_workdir):
    return tiny_workdir("multi", train=_multi_rows("t", 8, 0), val=_multi_rows("v", 4, 1))


# -- config and records ------------------------------------------------------------------------


def test_config_lang_list_and_single_unchanged():
    assert config_from_dict({"lang": "sw"}).lang == "sw" and config_from_dict({"lang": "sw"}).langs == ["sw"]
    cfg = config_from_dict({"lang": ["sw", "YO"]})
    assert cfg.lang == ["sw", "yo"] and cfg.langs == ["sw", "yo"]
    assert config_from_dict({"lang": "sw+yo"}).lang == ["sw", "yo"]
    assert config_from_dict({"lang": ["de"]}).lang == "de"  # a list of one is the single-language run
    from clo.config import ConfigError

    for bad in (["sw", "sw"], ["en", "sw"], ["sw", "xx"], []):
        with pytest.raises(ConfigError, match="lang"):
            config_from_dict({"lang": bad})


def test_multilingual_records_round_trip_and_views(tmp_path):
    rows = _multi_rows("r", 3, 0)
    recs = read_multilingual(_write(tmp_path / "m.jsonl", rows), ["de", "sw"])
    assert [r.to_dict() for r in recs] == rows
    view = recs[0].view("sw")
    assert (view.tgt_lang, view.x_tgt, view.x_en) == ("sw", rows[0]["tgt"]["sw"]["x_tgt"], rows[0]["x_en"])
    write_multilingual(recs, tmp_path / "m.parquet")
    assert [r.to_dict() for r in read_multilingual(tmp_path / "m.parquet")] == rows
    with pytest.raises(RecordError, match="no translation into"):
        read_multilingual(tmp_path / "m.jsonl", ["de", "yo"])
    bad = [dict(rows[0], tgt={"de": rows[0]["tgt"]["de"], "sw": {"x_tgt": "x", "y_tgt": " "}})]
    with pytest.raises(RecordError, match=r"tgt\.sw\.y_tgt.*empty text"):
        read_multilingual(_write(tmp_path / "bad.jsonl", bad))
    with pytest.raises(RecordError, match="multilingual record"):
        read_records(tmp_path / "m.jsonl")  # a single-language reader says what the file is


# -- the loss by hand -------------------------------------------------------------------------------


def _hand_logps(model, ds):
    """Summed response log-probs of every (example, key), one unpacked forward each."""
    out = torch.zeros(len(ds.examples), len(ds.keys))
    with torch.no_grad():
        for i, ex in enumerate(ds.examples):
            for j, key in enumerate(ds.keys):
                p, r = ex.seqs[key]
                ids = torch.tensor([p + r])
                logp = F.log_softmax(model(ids).logits[0, :-1].float(), -1)
                out[i, j] = logp[torch.arange(len(p) - 1, len(p) + len(r) - 1), torch.tensor(r)].sum()
    return out


def _hand_clo(pol, ref, counts, keys, langs, beta, lam, n_tokens):
    col = {k: j for j, k in enumerate(keys)}
    d = pol - ref
    cl = 0.0
    for lang in langs:
        cl = cl - F.logsigmoid(beta * (d[:, col["en_en"]] - d[:, col[f"en_{lang}"]])).mean()
        cl = cl - F.logsigmoid(beta * (d[:, col[f"{lang}_{lang}"]] - d[:, col[f"{lang}_en"]])).mean()
    nll = -sum(pol[:, col[f"{c}_{c}"]].sum() for c in langs) / n_tokens
    return lam * nll + (1 - lam) * cl, nll, cl


def test_clo_multi_loss_matches_a_hand_computation_on_a_tiny_model(workdir, tiny_tok):
    from clo.testing import tiny_model
    from clo.train.logprobs import pack_sequences, packed_sequence_logps

    ds = load_dataset(workdir / "train.jsonl", tiny_tok, 64, ["de", "sw"])
    assert ds.keys == multilingual_keys(["de", "sw"]) == (
        "en_en", "en_de", "de_de", "de_en", "en_sw", "sw_sw", "sw_en")
    torch.manual_seed(1)
    policy, reference = tiny_model("llama", vocab_size=512).eval(), tiny_model("llama", vocab_size=512).eval()
    pol, ref = _hand_logps(policy, ds), _hand_logps(reference, ds)
    # The packed scoring the trainer uses gives the same sums.
    seqs = [ex.seqs[k] for ex in ds.examples for k in ds.keys]
    with torch.no_grad():
        packed = packed_sequence_logps(policy, pack_sequences(seqs, None, 0), 64)[0].view(len(ds.examples), -1)
    torch.testing.assert_close(packed.float(), pol, atol=1e-4, rtol=1e-4)

    cfg = config_from_dict({"lang": ["de", "sw"], "train": {"beta": 0.3, "lam": 0.4}}).train
    method = methods.get("clo", ["de", "sw"])
    unit = method.unit_keys(cfg)[0]
    assert unit == ds.keys
    slots = method.nll_slots(cfg, unit)
    assert [unit[s] for s in slots] == ["de_de", "sw_sw"]
    n_tokens = sum(len(ex.seqs[unit[s]][1]) for ex in ds.examples for s in slots)
    nll = -pol[:, slots].sum() / n_tokens
    counts = torch.tensor([[len(ex.seqs[k][1]) for k in unit] for ex in ds.examples])
    loss, m = method.objective(pol, ref, nll, cfg, counts)
    want, want_nll, want_cl = _hand_clo(pol, ref, counts, unit, ["de", "sw"], 0.3, 0.4, n_tokens)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(m["nll"], want_nll)
    torch.testing.assert_close(m["cl"], want_cl)
    for name in ("acc_en_de", "acc_de", "acc_en_sw", "acc_sw", "margin_en_sw", "margin_sw", "cl_en", "cl_tgt"):
        assert name in m
    z = 0.3 * ((pol - ref)[:, unit.index("sw_sw")] - (pol - ref)[:, unit.index("sw_en")])
    torch.testing.assert_close(m["acc_sw"], (z > 0).float().mean())
    torch.testing.assert_close(m["margin_sw"], z.mean())


@pytest.mark.parametrize("cl_loss", CL_LOSSES)
def test_clo_multi_loss_of_one_language_is_clo_loss(cl_loss):
    g = torch.Generator().manual_seed(0)
    keys = ("en_en", "en_tgt", "tgt_tgt", "tgt_en")
    pol = {k: -torch.rand(5, generator=g) * 20 - 1 for k in keys}
    ref = None if cl_loss in REFERENCE_FREE else {k: -torch.rand(5, generator=g) * 20 - 1 for k in keys}
    counts = {k: torch.randint(3, 12, (5,), generator=g) for k in keys}
    nll = torch.tensor(2.5)
    a, ma = clo_loss(pol, ref, nll, 0.2, 0.3, cl_loss=cl_loss, counts=counts, label_smoothing=0.1 * (cl_loss == "robust"))
    b, mb = clo_multi_loss(pol, ref, nll, ["tgt"], 0.2, 0.3, cl_loss=cl_loss, counts=counts,
                           label_smoothing=0.1 * (cl_loss == "robust"))
    torch.testing.assert_close(a, b)
    for k in ("acc_en", "acc_tgt", "margin_en", "margin_tgt", "cl_en", "cl_tgt", "cl"):
        torch.testing.assert_close(ma[k], mb[k])


def test_clo_multi_loss_sums_the_languages():
    g = torch.Generator().manual_seed(3)
    keys = multilingual_keys(["de", "sw"])
    pol = {k: -torch.rand(4, generator=g) * 10 for k in keys}
    ref = {k: -torch.rand(4, generator=g) * 10 for k in keys}
    nll = torch.tensor(1.0)
    both, _ = clo_multi_loss(pol, ref, nll, ["de", "sw"], lam=0.0)
    one = sum(clo_multi_loss(pol, ref, nll, [c], lam=0.0)[0] for c in ("de", "sw"))
    torch.testing.assert_close(both, one)
    with pytest.raises(KeyError, match="missing"):
        clo_multi_loss({k: v for k, v in pol.items() if k != "sw_en"}, ref, nll, ["de", "sw"])


# -- units and batches -----------------------------------------------------------------------------


def test_an_example_is_one_unit_with_all_its_sequences(workdir, tiny_tok):
    from clo.train.trainer import _units, plan_batches

    ds = load_dataset(workdir / "train.jsonl", tiny_tok, 64, ["de", "sw"])
    cfg = config_from_dict({"lang": ["de", "sw"]}).train
    units = _units(methods.get("clo", ["de", "sw"]), cfg, ds)
    assert len(units) == len(ds.examples) and all(u.keys == ds.keys and len(u.keys) == 1 + 3 * 2 for u in units)
    for batch in plan_batches(len(units), 3, 1.0, 0):
        for i in batch:  # every sequence of an example travels with it
            assert set(units[i].keys) == set(ds.keys)
    # The baselines make their rows per language; one language keeps the registered method.
    assert methods.get("sft", ["de", "sw"]).unit_keys(cfg) == [("en_en",), ("de_de",), ("sw_sw",)]
    assert methods.get("dpo", ["de", "sw"]).unit_keys(cfg) == [
        ("en_en", "en_de"), ("en_en", "en_sw"), ("de_de", "de_en"), ("sw_sw", "sw_en")]
    assert methods.get("clo", ["de"]) is methods.METHODS["clo"] and methods.get("clo") is methods.METHODS["clo"]


def test_single_language_records_refused_for_a_list(workdir, tiny_tok, tmp_path):
    from clo.data.records import CrossLingualRecord
    from clo.train.data import DatasetError

    rec = CrossLingualRecord("a", "de", "what is", "the cat", "was ist", "die Katze")
    with pytest.raises(DatasetError, match="single-language"):
        encode_records([rec], tiny_tok, 64, ["de", "sw"])
    one = encode_records([rec], tiny_tok, 64, "de")
    assert one.keys == ("en_en", "en_tgt", "tgt_tgt", "tgt_en")


# -- training ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cl_loss", ["sigmoid", "simpo"])
def test_tiny_multilingual_training_reports_per_language_metrics(workdir, tmp_path, cl_loss):
    from clo.train.trainer import train

    cfg = config_from_dict({"model": str(workdir / "model"), "lang": ["de", "sw"], "train": {
        "method": "clo", "cl_loss": cl_loss, "lr": 5e-3, "min_lr": 5e-3, "batch_size": 4, "eval_every": 1,
        "max_length": 64, "reference_cache": str(tmp_path / "refcache"), "max_grad_norm": None}})
    res = train(cfg, workdir / "train.jsonl", workdir / "val.jsonl", tmp_path / "run")
    assert res.metrics["finished"] and res.metrics["steps"] == 2
    for name in ("acc_en_de", "acc_de", "acc_en_sw", "acc_sw", "margin_de", "margin_sw", "acc_en", "acc_tgt"):
        assert name in res.metrics["train_metrics"], name
        assert f"val/{name}" in res.metrics["val_metrics"], name
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["inputs"]["lang"] == ["de", "sw"]
    caches = sorted((tmp_path / "refcache").glob("*.pt"))
    if cl_loss in REFERENCE_FREE:
        assert not caches
    else:
        assert [tuple(torch.load(p, weights_only=True).shape) for p in caches] in ([(8, 7), (4, 7)], [(4, 7), (8, 7)])


# -- data build ----------------------------------------------------------------------------------------


def test_data_build_with_two_languages_through_one_cache(tmp_path):
    from clo.data.build import build_dataset

    src = tmp_path / "alpaca.json"
    src.write_text(json.dumps([{"instruction": f"Name a colour number {i}, please.", "input": "",
                                "output": f"Colour number {i} is a shade of blue."} for i in range(6)]))
    tree = {"lang": ["de", "sw"], "data": {"source": "alpaca", "path": str(src), "val_fraction": 0.34,
                                           "subsets": [2], "translator": {"kind": "identity"},
                                           "checks": {"langid": False}}}
    out = tmp_path / "out"
    s = build_dataset(config_from_dict(tree), out, progress=False)
    assert s["tgt_langs"] == ["de", "sw"] and s["tgt_lang"] == "de+sw" and s["records_out"] == 6
    train = read_multilingual(out / "train.jsonl", ["de", "sw"])
    assert len(train) == 4 and all(isinstance(r, MultilingualRecord) and set(r.tgt) == {"de", "sw"} for r in train)
    assert train[0].tgt["sw"]["x_tgt"] == train[0].x_en  # the identity translator
    assert set(train[0].meta["checks"]) >= {"de", "sw", "passed", "reasons"}
    assert len(read_multilingual(out / "subsets" / "train_2.jsonl")) == 2
    for code in ("de", "sw"):  # one language's validation records, as plain records
        val = read_records(out / f"validation_{code}.jsonl")
        assert len(val) == 2 and {r.tgt_lang for r in val} == {code}
    # One cache, keyed by target language: a second build of one language translates nothing new.
    one = build_dataset(config_from_dict({**tree, "lang": "sw", "data": {**tree["data"], "cache": s["cache"]}}),
                        tmp_path / "sw", progress=False)
    assert one["translation"]["translated"] == 0 and one["translation"]["cache_hits"] > 0
    assert read_records(tmp_path / "sw" / "train.jsonl")[0].tgt_lang == "sw"


# -- the study's tiny grid -----------------------------------------------------------------------------


@pytest.mark.slow
def test_beyond_tiny_grid_runs_and_reports_the_beyond_tables(tmp_path, workdir, shared_data):
    from clo.experiments.config import load_grid
    from clo.experiments.grid import run_grid
    from clo.report.beyond import TABLES as BEYOND
    from clo.report.tables import collect

    gdir = tmp_path / "grid"
    grid = load_grid(REPO / "configs" / "beyond_tiny.yaml", [
        f"output_dir={gdir}", f"models=[{{name: tiny-llama, spec: {workdir / 'model'}}}]",
        f"base.data.path={shared_data / 'sft_en' / 'alpaca_en_demo.json'}", f"base.eval.data_dir={shared_data}"])
    assert grid.langs == ["de", "sw", "de+sw"]
    res = run_grid(grid, progress=False)
    assert res.ok, res.failures
    multi = gdir / "runs" / "tiny-llama" / "de+sw" / "clo" / "nall"
    # Evaluated per language of the run: belebele only where the data is (only_langs), fidelity in each.
    assert sorted(p.name for p in (multi / "eval").glob("*.done.json")) == [
        "belebele_de.done.json", "belebele_en.done.json", "fidelity_de.done.json", "fidelity_sw.done.json"]
    metrics = json.loads((multi / "train.done.json").read_text())["result"]["metrics"]
    assert {"acc_en_de", "acc_de", "acc_en_sw", "acc_sw"} <= set(metrics["train_metrics"])
    ddir = gdir / "data" / "de+sw"
    assert read_multilingual(ddir / "train.jsonl", ["de", "sw"])
    assert {r.tgt_lang for r in read_records(ddir / "validation_sw.jsonl")} == {"sw"}

    tables = {name: fn(collect(gdir)) for name, fn in BEYOND.items()}
    cl = tables["beyond_cl_losses"]
    assert cl.columns == ["clo (sigmoid)", "clo-simpo (simpo)"]
    assert ("tiny-llama", "de+sw", "BELEBELE (de)") in {tuple(k) for k, _ in cl.rows}
    ml = tables["beyond_multilingual"]
    rows = {tuple(k): cells for k, cells in ml.rows}
    de = rows[("tiny-llama", "clo", "de+sw", "BELEBELE (de)")]
    assert de[0].value is not None and de[1].value is not None and de[2].value == pytest.approx(
        de[1].value - de[0].value)
    assert ("tiny-llama", "clo-simpo", "de+sw", "response in language (sw)") in rows
    assert not cl.empty and not ml.empty
    # Registered in the report (clo.report.TABLES), they are written with the others.
    from clo.report import TABLES

    assert TABLES.names()[-len(BEYOND):] == list(BEYOND)
    for name in BEYOND:
        assert (gdir / "report" / f"{name}.csv").is_file(), name


def test_prebuilt_multilingual_dataset_is_split_with_per_language_validation(tmp_path):
    from clo.experiments.grid import prebuilt_dataset

    src = _write(tmp_path / "m.jsonl", _multi_rows("p", 8, 2))
    cfg = config_from_dict({"lang": ["de", "sw"], "data": {"val_fraction": 0.25, "subsets": [3]}})
    out = prebuilt_dataset(src, cfg, tmp_path / "d")
    assert (out["train"], out["validation"]) == (6, 2)
    assert len(read_multilingual(tmp_path / "d" / "subsets" / "train_3.jsonl", ["de", "sw"])) == 3
    val = read_multilingual(tmp_path / "d" / "validation.jsonl")
    assert [r.x_tgt for r in read_records(tmp_path / "d" / "validation_de.jsonl")] == [r.tgt["de"]["x_tgt"] for r in val]
