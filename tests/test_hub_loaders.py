"""The loaders' hub fallbacks, run against a stand-in for ``datasets.load_dataset``.

This machine cannot reach the hub, so each fake serves a real ``datasets.Dataset`` in the schema
the hub repository really has (column names, types, class labels), built from the shared data
where it holds that source. The hub path must then give exactly what the local-directory path
gives for the same data, and reject the same bad rows with the same reason.
"""

import csv
import gzip
import json
import shutil

import datasets
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

from clo import languages
from clo.data.records import RecordError
from clo.data.sources import load_oasst1
from clo.eval import alpacaeval, mmmlu
from clo.eval import belebele as bb
from clo.eval.core import EvalDataError


class FakeHub:
    """Records every ``load_dataset`` call; answers with ``serve(path, name, kwargs)``."""

    def __init__(self, serve):
        self.serve = serve
        self.calls = []

    def __call__(self, path, name=None, **kwargs):
        self.calls.append((path, name, kwargs))
        return self.serve(path, name, kwargs)


@pytest.fixture
def hub(monkeypatch):
    def install(data):
        fake = FakeHub(data if callable(data) else lambda path, name, kwargs: data)
        monkeypatch.setattr(datasets, "load_dataset", fake)
        return fake

    return install


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _same_error(exc_type, local_call, local_where, hub_call, hub_where, reason):
    """Both paths raise ``exc_type`` with ``<where>: <reason>``, each naming its own source."""
    with pytest.raises(exc_type) as local:
        local_call()
    with pytest.raises(exc_type) as remote:
        hub_call()
    assert str(local.value) == f"{local_where}: {reason}"
    assert str(remote.value) == f"{hub_where}: {reason}"


# ---------------------------------------------------------------------------------------------
# Which repository, config and split each language asks for. Written out rather than read from
# clo.languages, so a wrong code in the registry fails here.

BELEBELE_CONFIGS = {"en": "eng_Latn", "de": "deu_Latn", "zh": "zho_Hans", "ko": "kor_Hang",
                    "id": "ind_Latn", "sw": "swh_Latn", "yo": "yor_Latn"}
MMMLU_CONFIGS = {"de": "DE_DE", "zh": "ZH_CN", "ko": "KO_KR", "id": "ID_ID", "sw": "SW_KE", "yo": "YO_NG"}

MMMLU_FEATURES = Features({"Unnamed: 0": Value("int64"), **{c: Value("string") for c in mmmlu.COLUMNS}})
# cais/mmlu's answer is a class label: an index into choices, -1 for "no label".
CAIS_FEATURES = Features({"question": Value("string"), "subject": Value("string"),
                          "choices": Sequence(Value("string")), "answer": ClassLabel(names=["A", "B", "C", "D"])})


@pytest.mark.parametrize("code", sorted(BELEBELE_CONFIGS))
def test_belebele_asks_for_the_flores_config(code, shared_data, hub):
    row = _jsonl(shared_data / "belebele" / "eng_Latn.jsonl")[0]
    fake = hub(Dataset.from_list([row]))
    assert bb.load_rows(languages.get(code), None) == [row]
    assert fake.calls == [("facebook/belebele", BELEBELE_CONFIGS[code], {"split": "test"})]


@pytest.mark.parametrize("code", sorted(MMMLU_CONFIGS) + ["en"])
def test_mmmlu_asks_for_the_locale_config_and_english_for_mmlu(code, hub):
    row = {"Question": "Q?", "A": "a", "B": "b", "C": "c", "D": "d", "Answer": "C", "Subject": "anatomy"}
    if code == "en":
        data = Dataset.from_list([{"question": "Q?", "subject": "anatomy", "choices": ["a", "b", "c", "d"],
                                   "answer": 2}], features=CAIS_FEATURES)
    else:
        data = Dataset.from_list([{"Unnamed: 0": 0, **row}], features=MMMLU_FEATURES)
    fake = hub(data)
    assert mmmlu.load_rows(languages.get(code), None) == [row | {"id": "0"}]
    if code == "en":
        assert fake.calls == [("cais/mmlu", "all", {"split": "test"})]
    else:  # CSV on the hub: cells such as "NA" must stay text, as in the local reader
        assert fake.calls == [("openai/MMMLU", MMMLU_CONFIGS[code], {"split": "test", "keep_default_na": False})]


# ---------------------------------------------------------------------------------------------
# BELEBELE: the shared files are facebook/belebele rows already.


@pytest.mark.parametrize("code", ["en", "de"])
def test_belebele_hub_rows_equal_local_rows(code, shared_data, hub):
    lang = languages.get(code)
    rows = _jsonl(shared_data / "belebele" / f"{lang.flores}.jsonl")
    hub(Dataset.from_list(rows))
    for limit in (None, 1, 7, len(rows) + 5):
        got = bb.load_rows(lang, None, limit)
        assert got == bb.load_rows(lang, shared_data, limit)
        assert got == rows[:limit]


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("mc_answer3", None, "field 'mc_answer3' missing"),
    ("correct_answer_num", "5", "field 'correct_answer_num' must be 1..4, got '5'"),
])
def test_belebele_bad_row_same_error_on_both_paths(field, value, reason, shared_data, tmp_path, hub):
    rows = _jsonl(shared_data / "belebele" / "eng_Latn.jsonl")[:3]
    rows[1] = rows[1] | {field: value}
    (tmp_path / "belebele").mkdir()
    path = tmp_path / "belebele" / "eng_Latn.jsonl"
    # A missing field is absent from the JSON line; the hub's table has it as null.
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows))
    hub(Dataset.from_list(rows))
    en = languages.get("en")
    _same_error(EvalDataError, lambda: bb.load_rows(en, tmp_path), f"{path}:2",
                lambda: bb.load_rows(en, None), "facebook/belebele[eng_Latn] row 1", reason)


# ---------------------------------------------------------------------------------------------
# MMMLU: English comes from cais/mmlu (question, subject, choices, answer index), the other
# languages from openai/MMMLU (the CSV's columns, its unnamed index as "Unnamed: 0").


def _csv_rows(path):
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _as_cais(r):
    return {"question": r["Question"], "subject": r["Subject"], "choices": [r[x] for x in "ABCD"],
            "answer": "ABCD".index(r["Answer"])}


def _as_mmmlu_hub(r):
    return {"Unnamed: 0": int(r[""]), **{c: r[c] for c in mmmlu.COLUMNS}}


def _write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.mark.parametrize("code", ["en", "de"])
def test_mmlu_hub_rows_equal_local_rows(code, shared_data, tmp_path, hub):
    if code == "en":  # cais/mmlu's schema (question, subject, choices, answer index)
        data_dir = shared_data
        to_hub, features = _as_cais, CAIS_FEATURES
    else:  # No German MMMLU offline: the English file in DE_DE's place is enough to compare the paths.
        data_dir = tmp_path
        (tmp_path / "mmlu").mkdir()
        shutil.copy(shared_data / "mmlu" / "mmlu_EN-US.csv", tmp_path / "mmlu" / "mmlu_DE-DE.csv")
        to_hub, features = _as_mmmlu_hub, MMMLU_FEATURES
    local_rows = _csv_rows(shared_data / "mmlu" / "mmlu_EN-US.csv")
    hub(Dataset.from_list([to_hub(r) for r in local_rows], features=features))
    lang = languages.get(code)
    got, local = mmmlu.load_rows(lang, None), mmmlu.load_rows(lang, data_dir)
    assert len(got) == len(local_rows)
    assert got == local
    assert mmmlu.stratified_sample(got, 100, seed=3) == mmmlu.stratified_sample(local, 100, seed=3)


GOOD = {"Question": "Which organ pumps blood?", "A": "Lung", "B": "Heart", "C": "Liver", "D": "Skin",
        "Answer": "B", "Subject": "anatomy"}


@pytest.mark.parametrize(("bad", "reason"), [
    ({"Answer": "E"}, "field 'Answer' must be one of A-D, got 'E'"),
    # Both are substrings of "ABCD", which the check once accepted.
    ({"Answer": ""}, "field 'Answer' must be one of A-D, got ''"),
    ({"Answer": "AB"}, "field 'Answer' must be one of A-D, got 'AB'"),
    ({"Question": " "}, "field 'Question' is empty"),
])
def test_mmmlu_bad_row_same_error_on_both_paths(bad, reason, tmp_path, hub):
    rows = [{"": str(i), **GOOD} for i in range(3)]
    rows[1] |= bad
    path = tmp_path / "mmlu" / "mmlu_DE-DE.csv"
    _write_csv(path, rows)
    hub(Dataset.from_list([_as_mmmlu_hub(r) for r in rows], features=MMMLU_FEATURES))
    de = languages.get("de")
    _same_error(EvalDataError, lambda: mmmlu.load_rows(de, tmp_path), f"{path}:3",
                lambda: mmmlu.load_rows(de, None), "openai/MMMLU[DE_DE] row 1", reason)


def test_mmmlu_missing_column_same_error_on_both_paths(tmp_path, hub):
    rows = [{"": str(i), **{c: v for c, v in GOOD.items() if c != "Subject"}} for i in range(2)]
    path = tmp_path / "mmlu" / "mmlu_DE-DE.csv"
    _write_csv(path, rows)
    hub(Dataset.from_list([{"Unnamed: 0": int(r[""]), **{c: r[c] for c in r if c}} for r in rows]))
    de = languages.get("de")
    _same_error(EvalDataError, lambda: mmmlu.load_rows(de, tmp_path), f"{path}:1",
                lambda: mmmlu.load_rows(de, None), "openai/MMMLU[DE_DE]", "missing column(s) Subject")


@pytest.mark.parametrize(("bad", "features", "reason"), [
    # -1 is the class label's "no label", which indexing would have turned into D.
    ({"answer": -1}, CAIS_FEATURES, "field 'answer' must be 0..3, got -1"),
    ({"answer": 4}, None, "field 'answer' must be 0..3, got 4"),
    ({"choices": ["a", "b", "c"]}, CAIS_FEATURES, "field 'choices' must hold 4 options, got ['a', 'b', 'c']"),
    ({"question": ""}, CAIS_FEATURES, "field 'Question' is empty"),
])
def test_mmlu_english_bad_hub_row_is_a_clear_error(bad, features, reason, hub):
    rows = [_as_cais(GOOD) for _ in range(3)]
    rows[1] |= bad
    hub(Dataset.from_list(rows, features=features))
    with pytest.raises(EvalDataError) as e:
        mmmlu.load_rows(languages.get("en"), None)
    assert str(e.value) == f"cais/mmlu[all] row 1: {reason}"


def test_mmlu_english_hub_without_a_column_is_a_clear_error(hub):
    hub(Dataset.from_list([{k: v for k, v in _as_cais(GOOD).items() if k != "subject"}]))
    with pytest.raises(EvalDataError) as e:
        mmmlu.load_rows(languages.get("en"), None)
    assert str(e.value) == "cais/mmlu[all]: missing column(s) subject"


# ---------------------------------------------------------------------------------------------
# AlpacaEval: the shared file is the hub repository's alpaca_eval.json (AlpacaEval 1 references).

ALPACA_EVAL_CALL = ("json", None, {"data_files": "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json",
                                   "split": "train"})


def test_alpaca_eval_hub_rows_equal_local_rows(shared_data, hub):
    rows = json.loads((shared_data / "alpaca_eval" / "text_davinci_003.json").read_text(encoding="utf-8"))
    fake = hub(Dataset.from_list(rows))
    got = alpacaeval.load_instructions(None, None)
    # The repository's dataset script cannot run under datasets>=4: the data file is read instead.
    assert fake.calls == [ALPACA_EVAL_CALL]
    assert got == alpacaeval.load_instructions(None, shared_data)
    assert got == rows
    assert {tuple(sorted(r)) for r in got} == {("dataset", "generator", "instruction", "output")}


@pytest.mark.parametrize("instruction", ["  ", None])
def test_alpaca_eval_bad_row_same_error_on_both_paths(instruction, shared_data, tmp_path, hub):
    rows = json.loads((shared_data / "alpaca_eval" / "text_davinci_003.json").read_text(encoding="utf-8"))[:3]
    rows[1] = rows[1] | {"instruction": instruction}
    path = tmp_path / "alpaca_eval.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    hub(Dataset.from_list(rows))
    _same_error(EvalDataError, lambda: alpacaeval.load_instructions(path, None), str(path),
                lambda: alpacaeval.load_instructions(None, None), "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json",
                "item 1: field 'instruction' missing or empty")


# ---------------------------------------------------------------------------------------------
# oasst1: message trees in the hub's schema, train and validation splits.

_DETOXIFY = ("toxicity", "severe_toxicity", "obscene", "identity_attack", "insult", "threat", "sexual_explicit")
OASST1_FEATURES = Features({
    "message_id": Value("string"), "parent_id": Value("string"), "user_id": Value("string"),
    "created_date": Value("string"), "text": Value("string"), "role": Value("string"), "lang": Value("string"),
    "review_count": Value("int32"), "review_result": Value("bool"), "deleted": Value("bool"),
    "rank": Value("int32"), "synthetic": Value("bool"), "model_name": Value("string"),
    "detoxify": {k: Value("float64") for k in _DETOXIFY},
    "message_tree_id": Value("string"), "tree_state": Value("string"),
    "emojis": Sequence({"name": Value("string"), "count": Value("int32")}),
    "labels": Sequence({"name": Value("string"), "value": Value("float64"), "count": Value("int32")}),
})


def _mid(tree, k):
    return f"{tree}{k}{'0' * 6}-0000-4000-8000-{tree * 12}"


def _msg(tree, k, parent, role, text, *, lang="en", rank=None, deleted=False, review_result=True):
    return {
        "message_id": _mid(tree, k), "parent_id": None if parent is None else _mid(tree, parent),
        "user_id": f"user-{tree}{k}", "created_date": "2023-02-08T10:00:00.000000+00:00", "text": text,
        "role": role, "lang": lang, "review_count": 3, "review_result": review_result, "deleted": deleted,
        "rank": rank, "synthetic": False, "model_name": None,
        "detoxify": None if role == "prompter" else dict.fromkeys(_DETOXIFY, 0.001),
        "message_tree_id": _mid(tree, 0), "tree_state": "ready_for_export",
        "emojis": {"name": ["+1"], "count": [1]} if rank == 0 else {"name": [], "count": []},
        "labels": {"name": ["spam", "quality"], "value": [0.0, 0.75], "count": [3, 3]},
    }


OASST1_TRAIN = [
    _msg("a", 0, None, "prompter", "How long should I boil an egg?"),
    _msg("a", 1, 0, "assistant", "About nine minutes for a hard-boiled egg.", rank=1),
    _msg("a", 2, 0, "assistant", "Deleted answer.", rank=0, deleted=True),
    _msg("a", 3, 0, "assistant", "Until it is done.", rank=2),
    _msg("a", 4, 1, "prompter", "And a soft-boiled one?"),
    _msg("a", 5, 4, "assistant", "Six minutes.", rank=0),  # second turn: never a first-turn answer
    _msg("b", 0, None, "prompter", "Wie spät ist es?", lang="de"),
    _msg("b", 1, 0, "assistant", "Das kann ich nicht wissen.", lang="de", rank=0),
    _msg("c", 0, None, "prompter", "Name a primary colour."),
    _msg("c", 1, 0, "assistant", "El rojo es un color primario.", lang="es", rank=0),
    _msg("c", 2, 0, "assistant", "Purple.", rank=0, review_result=False),
    _msg("c", 3, 0, "assistant", "Red is a primary colour.", rank=1),
    _msg("d", 0, None, "prompter", "A deleted question?", deleted=True),
    _msg("d", 1, 0, "assistant", "An answer to a deleted question.", rank=0),
]
OASST1_VALIDATION = [
    _msg("e", 0, None, "prompter", "What is two plus two?"),
    _msg("e", 1, 0, "assistant", "Four.", rank=0),
    _msg("e", 2, 0, "assistant", "Five.", rank=1),
    _msg("f", 0, None, "prompter", "Say hello."),
    _msg("f", 1, 0, "assistant", "Hello!"),
    _msg("g", 0, None, "prompter", "Is a blank reply an answer?"),
    _msg("g", 1, 0, "assistant", "   ", rank=0),
    _msg("h", 0, None, "prompter", "Recommend a book."),
    _msg("h", 1, 0, "assistant", "Try 'Dune'.", rank=1),
]
# Rank 0 first (e); rank 1 in root order, train before validation (a, c, h); unranked last (f).
# Not chosen: a2 (deleted), a5 (a later turn), b (German), c1 (Spanish), c2 (review failed),
# d (deleted root), e2 and a3 (worse rank), g (blank reply only).
OASST1_PAIRS = [
    (_mid("e", 0), "What is two plus two?", "Four."),
    (_mid("a", 0), "How long should I boil an egg?", "About nine minutes for a hard-boiled egg."),
    (_mid("c", 0), "Name a primary colour.", "Red is a primary colour."),
    (_mid("h", 0), "Recommend a book.", "Try 'Dune'."),
    (_mid("f", 0), "Say hello.", "Hello!"),
]


def _oasst1_hub():
    return DatasetDict({"train": Dataset.from_list(OASST1_TRAIN, features=OASST1_FEATURES),
                        "validation": Dataset.from_list(OASST1_VALIDATION, features=OASST1_FEATURES)})


def _pairs(examples):
    assert {e.source for e in examples} <= {"oasst1"}
    return [(e.id, e.x_en, e.y_en) for e in examples]


def test_oasst1_hub_pairs_and_local_exports(tmp_path, hub):
    ds = _oasst1_hub()
    fake = hub(ds)
    assert _pairs(load_oasst1(None, 100)) == OASST1_PAIRS
    assert _pairs(load_oasst1(None, 2)) == OASST1_PAIRS[:2]
    assert fake.calls == [("OpenAssistant/oasst1", None, {})] * 2

    # The messages export (one JSON object per message, all splits) and the hub's own parquet files.
    gz = tmp_path / "oasst_ready.messages.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(m) + "\n" for m in OASST1_TRAIN + OASST1_VALIDATION)
    parquet_dir = tmp_path / "oasst1" / "data"
    for split in ("train", "validation"):
        ds[split].to_parquet(str(parquet_dir / f"{split}-00000-of-00001.parquet"))
    for export in (gz, parquet_dir.parent):
        assert _pairs(load_oasst1(str(export), 100)) == OASST1_PAIRS
        assert _pairs(load_oasst1(str(export), 2)) == OASST1_PAIRS[:2]


def test_oasst1_missing_column_same_error_on_both_paths(tmp_path, hub):
    rows = [{k: v for k, v in m.items() if k != "role"} for m in OASST1_TRAIN[:2]]
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    hub(DatasetDict({"train": Dataset.from_list(rows)}))
    _same_error(RecordError, lambda: load_oasst1(str(path), 10), f"{path}:1",
                lambda: load_oasst1(None, 10), "OpenAssistant/oasst1[train]:1",
                "field 'role' missing field (oasst1 message-tree schema)")
