"""Evaluation tasks as objects: what each built-in task declares (data files, output names, item
counts, options), and a task registered by another module reaching the command line, the grid's
checks and its estimate with no other edit."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clo import cli, languages
from clo.config import load_config
from clo.eval import core
from clo.eval.task import TASKS, Option, Task, get_task, register, tasks
from clo.experiments import preflight as pf
from clo.experiments.config import grid_from_dict
from clo.experiments.estimate import estimate_grid, load_assumptions
from clo.registry import UnknownName

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "experiments"
DE, EN, SW = languages.get("de"), languages.get("en"), languages.get("sw")


# ---------------------------------------------------------------------------------------------
# the registry


def test_every_builtin_task_is_registered_in_order():
    assert [t.name for t in tasks()] == ["belebele", "mmmlu", "alpacaeval", "alpacaeval-outputs", "fidelity",
                                         "confusion", "preference"]


def test_an_unknown_task_names_the_closest():
    with pytest.raises(UnknownName, match=r"unknown evaluation task 'belebel'; did you mean 'belebele'\?"):
        get_task("belebel")
    with pytest.raises(KeyError):  # what callers catching the old error still see
        get_task("nope")


def test_a_task_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        register(Task("belebele", "again", lambda ctx: None))


def test_a_variant_must_be_an_option():
    with pytest.raises(ValueError, match="variant 'style' is not one of its options"):
        Task("x", "x", lambda ctx: None, variant="style")


# ---------------------------------------------------------------------------------------------
# data files: the paths the item cache's fingerprint digests, unchanged


def _reference_files(task: str, lang, data_dir: Path, options: dict) -> list[Path]:
    """The files each task read, as an if-chain on task names, written out independently of the
    task declarations: the fingerprints of existing caches digest exactly these."""
    if task == "belebele":
        return [data_dir / "belebele" / f"{lang.flores}.jsonl"]
    if task == "mmmlu":
        code = "EN-US" if lang.mmmlu is None else lang.mmmlu.replace("_", "-")
        return [data_dir / "mmlu" / f"mmlu_{code}.csv"]
    if task in ("alpacaeval", "alpacaeval-outputs") and not options.get("instructions_file"):
        return [data_dir / "alpaca_eval" / "text_davinci_003.json"]
    lcb = data_dir / "language_confusion"
    if task == "fidelity" and not options.get("prompts") and not options.get("prompts_file"):
        return sorted((lcb / "monolingual").glob(f"*/{lang.code}.csv"))
    if task == "confusion":
        split = options.get("split", "monolingual")
        splits = ("monolingual", "crosslingual") if split == "all" else (split,)
        files = [f for sp in splits for f in sorted((lcb / sp).glob(f"*/{lang.code}.csv"))]
        return files + ([] if options.get("words_file") else [lcb / "words"])
    return []


OPTION_SETS = [{}, {"split": "all"}, {"split": "crosslingual"}, {"words_file": "w.txt"}, {"prompts_file": "p.txt"},
               {"prompts": ["a"]}, {"instructions_file": "i.json"}, {"template": "harness"}]


@pytest.mark.parametrize("task", ["belebele", "mmmlu", "alpacaeval", "alpacaeval-outputs", "fidelity", "confusion",
                                  "preference"])
def test_data_files_are_the_ones_the_fingerprints_digest(task, shared_data):
    for lang in (DE, EN, SW, languages.get("ko")):
        for opts in OPTION_SETS:
            assert get_task(task).files(lang, shared_data, opts) == _reference_files(task, lang, shared_data, opts)
    assert get_task(task).files(DE, None, {}) == []


def test_confusion_digests_name_both_splits_and_the_word_list(shared_data):
    digests = core.data_digests("confusion", DE, shared_data, {"split": "all"})
    mono = sorted(p.relative_to(shared_data).as_posix()
                  for p in (shared_data / "language_confusion" / "monolingual").glob("*/de.csv"))
    cross = sorted(p.relative_to(shared_data).as_posix()
                   for p in (shared_data / "language_confusion" / "crosslingual").glob("*/de.csv"))
    assert mono and cross
    assert sorted(digests) == sorted([*mono, *cross, "language_confusion/words"])


def test_eval_settings_of_one_task_stay_out_of_the_others_fingerprints():
    cfg = load_config(None, [])
    assert "mmmlu_max_new_tokens" in core._fingerprinted_eval("mmmlu", cfg.eval)
    for task in ("belebele", "fidelity", "alpacaeval", "preference"):
        fp = core._fingerprinted_eval(task, cfg.eval)
        assert "mmmlu_max_new_tokens" not in fp and "mmmlu_retries" in fp and "limit" not in fp


# ---------------------------------------------------------------------------------------------
# output names


@pytest.mark.parametrize(("task", "opts", "name"), [
    ("belebele", {}, "belebele-de"), ("belebele", {"template": "native"}, "belebele-de"),
    ("belebele", {"template": "harness"}, "belebele-de-harness"),
    ("confusion", {}, "confusion-de"), ("confusion", {"split": "all"}, "confusion-de-all"),
    ("confusion", {"split": "crosslingual"}, "confusion-de-crosslingual"),
    ("alpacaeval-outputs", {"limit": 3}, "alpacaeval-outputs-de"), ("fidelity", {"source": "lcb"}, "fidelity-de"),
    ("preference", {}, "preference-de"), ("mmmlu", {"max_new_tokens": 9}, "mmmlu-de"),
])
def test_output_names(task, opts, name):
    assert get_task(task).output_name("de", opts) == name


# ---------------------------------------------------------------------------------------------
# item counts


def _data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "belebele").mkdir(parents=True)
    (d / "belebele" / "deu_Latn.jsonl").write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3}\n', encoding="utf-8")
    (d / "mmlu").mkdir()
    with (d / "mmlu" / "mmlu_DE-DE.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Question", "A", "B", "C", "D", "Answer", "Subject"])
        for i in range(5):  # a quoted field over two lines: 5 rows in 6 lines
            w.writerow([f"q{i}\nsecond line" if i == 0 else f"q{i}", "a", "b", "c", "d", "A", "s"])
    for split, source, n in (("monolingual", "okapi", 2), ("monolingual", "aya", 3), ("crosslingual", "okapi", 4)):
        p = d / "language_confusion" / split / source / "de.csv"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("prompt,language\n" + "".join(f"p{i},de\n" for i in range(n)), encoding="utf-8")
    (d / "alpaca_eval").mkdir()
    (d / "alpaca_eval" / "text_davinci_003.json").write_text(
        json.dumps([{"instruction": f"i{i}", "output": "o"} for i in range(7)]), encoding="utf-8")
    return d


ASSUMED = {"belebele": 900, "mmmlu": 14042, "confusion": 100, "alpacaeval": 805}


def test_item_counts_from_local_files(tmp_path):
    d = _data_dir(tmp_path)
    held = tmp_path / "held.jsonl"
    held.write_text('{"id": 1}\n{"id": 2}\n', encoding="utf-8")
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\n\ntwo\nthree\n", encoding="utf-8")

    def count(task, lang=DE, limit=None, **opts):
        return get_task(task).item_count(lang, d, opts, limit=limit, assumed=ASSUMED)

    assert count("belebele") == 3 and count("belebele", limit=2) == 2 and count("belebele", limit=50) == 3
    assert count("mmmlu") == 5
    assert count("confusion") == 5 and count("confusion", split="crosslingual") == 4
    assert count("confusion", split="all") == 9
    assert count("fidelity") == 5 and count("fidelity", prompts_file=str(prompts)) == 3
    assert count("fidelity", prompts=["a", "b"]) == 2
    assert count("fidelity", lang=SW, held_out_file=str(held)) == 2  # no benchmark prompts in Swahili
    assert count("alpacaeval") == 7 and count("alpacaeval-outputs", limit=4) == 4
    assert count("preference", held_out_file=str(held)) == 2 and count("preference") == 0


def test_item_counts_without_local_data_are_the_full_test_sets():
    def count(task, limit=None, **opts):
        return get_task(task).item_count(DE, None, opts, limit=limit, assumed=ASSUMED)

    assert (count("belebele"), count("mmmlu"), count("alpacaeval")) == (900, 14042, 805)
    assert count("confusion") == 100 and count("confusion", split="all") == 200
    assert count("belebele", limit=10) == 10
    assert count("fidelity") == 100  # the benchmark's prompts per source, as for confusion


# ---------------------------------------------------------------------------------------------
# the command line


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_eval_help_lists_every_task_with_its_help(capsys):
    out = _help(capsys, "eval")
    for t in tasks():
        assert t.name in out
    assert "target vs English answer preferred per token" in out


def test_a_task_help_lists_only_its_own_options(capsys):
    out = _help(capsys, "eval", "fidelity")
    assert "--prompts-file" in out and "--held-out-file" in out and "--max-new-tokens" in out
    assert "--model" in out and "--limit" in out
    for other in ("--template", "--split", "--baseline", "--instructions-file", "--max-length",
                  "--allow-failed-judgments"):
        assert other not in out
    out = _help(capsys, "eval", "preference")
    assert "--held-out-file FILE" in out and "--max-length N" in out and "--prompts-file" not in out


def test_eval_preference_passes_its_options(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake(task, model, cfg, out, *, overwrite=False, **options):
        seen.update(task=task, model=model, lang=cfg.lang, options=options)
        return {"n": 2}

    monkeypatch.setattr("clo.eval.evaluate", fake)
    rc = cli.main(["eval", "preference", "--model", "m", "--lang", "de", "--held-out-file", "h.jsonl",
                   "--max-length", "64", "--limit", "2", "--output", str(tmp_path)])
    assert rc == 0
    assert seen == {"task": "preference", "model": "m", "lang": "de",
                    "options": {"held_out_file": "h.jsonl", "max_length": 64, "limit": 2}}
    assert json.loads(capsys.readouterr().out) == {"n": 2}


def test_an_option_only_the_command_reads_is_not_passed(monkeypatch, tmp_path, capsys):
    seen = {}
    monkeypatch.setattr("clo.eval.evaluate",
                        lambda task, model, cfg, out, **kw: seen.update(kw) or {"failures": 1, "n": 3})
    argv = ["eval", "alpacaeval", "--model", "m", "--output", str(tmp_path)]
    assert cli.main(argv) == 3
    assert cli.main([*argv, "--allow-failed-judgments"]) == 0
    assert "allow_failed_judgments" not in seen


def test_help_of_a_task_does_not_import_torch():
    code = ("import sys\nfrom clo import cli\n"
            "try:\n    cli.main(['eval', 'belebele', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip().splitlines()[-1] == "False"


# ---------------------------------------------------------------------------------------------
# a task registered elsewhere: the command line, the grid's checks and its estimate


def _count_words(lang, data_dir, opts, assumed):
    path = Path(data_dir) / "words" / f"{lang.code}.txt" if data_dir else None
    return len(path.read_text(encoding="utf-8").split()) if path and path.is_file() else 11


def _words_missing(lang, data_dir, opts):
    if data_dir is None:
        return "wordcount reads a local copy: set eval.data_dir"
    path = Path(data_dir) / "words" / f"{lang.code}.txt"
    return None if path.is_file() else f"{path}: no word list for {lang.code}"


def _run_words(ctx, *, limit=None, style="plain", max_words=None):
    from clo.eval.core import TaskResult

    words = (ctx.data_dir / "words" / f"{ctx.lang.code}.txt").read_text(encoding="utf-8").split()[:limit or max_words]
    return TaskResult({"n": len(words), "style": style}, [{"id": w} for w in words], core.data_hash(words))


WORDS = Task("wordcount", "counts the words of a list (a task of a test module)", _run_words,
             data_files=lambda lang, opts: [f"words/{lang.code}.txt"], missing_data=_words_missing,
             count_items=_count_words,
             options=(Option("style", "how to count", choices=("plain", "fancy"), default="plain"),
                      Option("max_words", "stop after this many", int, metavar="N")),
             variant="style")


@pytest.fixture
def wordcount(monkeypatch):
    tasks()  # the built-in ones first, as the command line lists them
    monkeypatch.setitem(TASKS._entries, WORDS.name, WORDS)
    return WORDS


def test_a_registered_task_is_a_subcommand(wordcount, capsys, tmp_path):
    assert "wordcount" in _help(capsys, "eval")
    out = _help(capsys, "eval", "wordcount")
    assert "--style {plain,fancy}" in out and "--max-words N" in out and "--template" not in out
    assert cli.main(["eval", "belebele", "--style", "fancy"]) == 2
    assert capsys.readouterr().err.strip().endswith("--style applies only to wordcount, not belebele")


def test_a_registered_task_runs_with_its_data_file_in_the_fingerprint(wordcount, tmp_path, capsys, tiny_tok):
    from clo.testing import tiny_model

    d = tmp_path / "data" / "words"
    d.mkdir(parents=True)
    (d / "de.txt").write_text("eins zwei drei vier", encoding="utf-8")
    cfg = load_config(None, [f"eval.data_dir={tmp_path / 'data'}", "lang=de"])
    m = core.evaluate("wordcount", (tiny_model("llama", vocab_size=512), tiny_tok), cfg, tmp_path / "out",
                      style="fancy", max_words=3)
    assert m == {"n": 3, "style": "fancy"}
    doc = json.loads((tmp_path / "out" / "wordcount-de-fancy.json").read_text())
    assert list(doc["fingerprint"]["inputs"]["data"]) == ["words/de.txt"]


def _grid(tmp_path: Path, data_dir: Path | None, **kw):
    tree = {
        "name": "t", "output_dir": str(tmp_path / "grid"),
        "base": {"data": {"val_fraction": 0.25}, "eval": {"data_dir": str(data_dir) if data_dir else None}},
        "models": [{"name": "tiny", "spec": str(tmp_path / "model")}],
        "langs": ["de", "sw"], "methods": ["sft"], "sizes": [None],
        "dataset": {"de": str(FIXTURES / "de_records.jsonl"), "sw": str(FIXTURES / "de_records.jsonl")},
        "eval_jobs": [{"task": "wordcount", "opts": {"limit": 3}}],
        **kw,
    }
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "config.json").write_text(json.dumps(
        {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
         "vocab_size": 512}))
    return grid_from_dict(tree, "g.yaml")


def test_a_registered_task_is_checked_before_a_grid_runs(wordcount, tmp_path):
    data = tmp_path / "data"
    (data / "words").mkdir(parents=True)
    (data / "words" / "de.txt").write_text("a b c d e", encoding="utf-8")
    res = pf.preflight(_grid(tmp_path, data), "g.yaml", env={}, checks=["eval-data"])
    assert [f.message for f in res.errors] == [
        (f"wordcount: {data}/words/sw.txt: no word list for sw (2 evaluation(s), e.g. tiny/sw/base; give the "
         "data, or limit the job with only_langs)")]
    assert res.errors[0].where == "g.yaml: eval_jobs.0"


def test_a_registered_task_is_estimated_from_its_item_count(wordcount, tmp_path):
    data = tmp_path / "data"
    (data / "words").mkdir(parents=True)
    (data / "words" / "de.txt").write_text("a b", encoding="utf-8")  # 2 items (under the limit of 3)
    est = estimate_grid(_grid(tmp_path, data), load_assumptions())
    notes = {s.name: s.note for s in est.stages if s.kind == "eval"}
    de = [n for k, n in notes.items() if "/de/" in k and "wordcount" in k]
    sw = [n for k, n in notes.items() if "/sw/" in k and "wordcount" in k]
    assert de and sw
    assert set(de) == {"2 items"} and set(sw) == {"3 items"}  # sw: no file, 11 assumed, limit 3


def test_offline_hub_warning_only_for_tasks_reading_the_hub(tmp_path):
    grid = _grid(tmp_path, None, eval_jobs=[{"task": "belebele"}, {"task": "preference"}], langs=["de"],
                 dataset={"de": str(FIXTURES / "de_records.jsonl")})
    res = pf.preflight(grid, "g.yaml", env={"HF_HUB_OFFLINE": "1"}, checks=["eval-data"])
    warned = [f.message for f in res.warnings]
    assert len(warned) == 1 and warned[0].startswith("unset: belebele reads the hub"), warned
    assert not res.errors


def test_jobs_reading_held_out_records_are_estimated_at_the_validation_split(tmp_path):
    n = sum(1 for line in (FIXTURES / "de_records.jsonl").read_text(encoding="utf-8").splitlines() if line.strip())
    grid = _grid(tmp_path, None, langs=["de"], dataset={"de": str(FIXTURES / "de_records.jsonl")},
                 eval_jobs=[{"task": "preference"}, {"task": "fidelity"}])
    est = estimate_grid(grid, load_assumptions())
    notes = {s.name.split("/")[-1]: s.note for s in est.stages if s.kind == "eval" and "/base/" not in s.name}
    # val_fraction 0.25 of the dataset's records: what the data stage will write and both tasks read
    assert notes["preference_de"] == notes["fidelity_de"] == f"{round(n * 0.25)} items"
