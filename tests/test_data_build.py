import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from clo.config import config_from_dict
from clo.data.build import build_dataset, split_indices, subset_sizes
from clo.data.records import CrossLingualRecord, read_records
from clo.data.views import make_view

# A deterministic stand-in translator that writes real German (so the language check passes):
# each segment becomes German pool sentences chosen by a hash of the segment, about as long as
# the source. "FAILME" segments come back in English and "ECHOME" segments unchanged, to exercise
# the rejects. An optional delay per batch lets a test kill a build midway.
FAKE = textwrap.dedent('''
    import hashlib, os, re, time
    from clo.data import translators as T

    POOL = ["Der Hund schläft im Garten.", "Heute ist das Wetter schön und warm.",
            "Wir kaufen Brot beim Bäcker um die Ecke.", "Die Kinder spielen gern Fußball.",
            "Mein Bruder liest jeden Abend ein Buch.", "Das Museum öffnet um neun Uhr.",
            "Im Winter fällt in den Bergen viel Schnee.", "Sie trinkt ihren Kaffee ohne Zucker."]

    class Fake(T.Translator):
        kind = "fake-de"

        def fingerprint(self):
            return "fake-de/v1"

        def translate_batch(self, texts, src, tgt):
            time.sleep(float(os.environ.get("FAKE_DELAY", "0")))
            out = []
            for t in texts:
                if "FAILME" in t:
                    out.append("Sorry, I cannot translate: " + t)
                    continue
                if "ECHOME" in t:
                    out.append(t)
                    continue
                i = int(hashlib.sha256(t.encode()).hexdigest(), 16) % len(POOL)
                s = POOL[i]
                while len(s) < 0.9 * len(t):
                    i = (i + 3) % len(POOL)
                    s += " " + POOL[i]
                # A translation keeps the source's numbers (the numbers check looks for them).
                out.append(" ".join([s, *re.findall(r"[0-9]+", t)]))
            return out

    if "fake-de" not in T.TRANSLATORS:
        T.register_translator("fake-de", Fake)
''')


@pytest.fixture
def fake(tmp_path, monkeypatch):
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "fake_translator.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(mod_dir))
    import importlib

    import fake_translator

    importlib.reload(fake_translator)
    return mod_dir


def _alpaca(path: Path, n: int, extra: list[dict] = ()) -> Path:
    rows = [{"instruction": f"Write sentence number {i} about a dog.", "input": "",
             "output": f"Here is sentence {i}. The dog sleeps in the garden and dreams of bones."} for i in range(n)]
    rows[3:3] = list(extra)
    path.write_text(json.dumps(rows))
    return path


def _cfg(src: Path, **data) -> object:
    d = {"source": "alpaca", "path": str(src), "n": 50, "translator": {"kind": "fake-de", "batch_size": 4},
         "val_fraction": 0.1, "subsets": [5, 10, 1000], "seed": 3}
    d.update(data)
    return config_from_dict({"lang": "de", "data": d})


def test_split_and_subset_rules():
    assert split_indices(10, 0.25, 0) == sorted(__import__("random").Random(0).sample(range(10), 2))  # round(2.5) = 2
    assert split_indices(10, 0.0, 0) == []
    assert split_indices(3, 0.01, 0) != [] and len(split_indices(3, 0.01, 0)) == 1  # at least one when asked
    assert subset_sizes([200, 400, 6400], 1000) == [200, 400, 1000]
    assert subset_sizes([200, 400], 1000) == [200, 400]
    assert subset_sizes([200, 400, 1000], 1000) == [200, 400, 1000]


def test_build_writes_records_rejects_splits_subsets(fake, tmp_path):
    src = _alpaca(tmp_path / "a.json", 20, extra=[
        {"instruction": "FAILME please", "input": "", "output": "An answer that is long enough to be checked."},
        {"instruction": "An instruction with no answer.", "input": "", "output": "  "},
        {"instruction": "Say this: ECHOME back to me", "input": "", "output": "An answer that is long enough."},
    ])
    out = tmp_path / "out"
    s = build_dataset(_cfg(src), out, progress=False)
    assert (s["records_in"], s["records_out"], s["rejects"]) == (23, 20, 3)
    assert s["rejects_by_reason"] == {"empty_y_en": 1, "lang_x_tgt": 1, "segment_echo_x_tgt": 1}
    assert (s["train"], s["validation"]) == (18, 2)
    assert (s["translation"]["failed"], s["translation"]["failures"]) == (1, {"echo": 1})
    train, val = read_records(out / "train.jsonl"), read_records(out / "validation.jsonl")
    accepted_ids = [f"alpaca-{i}" for i in range(23) if i not in (3, 4, 5)]
    val_idx = split_indices(20, 0.1, 3)
    assert [r.id for r in val] == [accepted_ids[i] for i in val_idx]
    assert [r.id for r in train] == [x for i, x in enumerate(accepted_ids) if i not in val_idx]
    r = train[0]
    assert r.x_en == "Write sentence number 0 about a dog." and r.tgt_lang == "de" and r.source == "alpaca"
    assert r.meta["translator"] == "fake-de/v1" and r.meta["checks"]["passed"]
    assert r.meta["checks"]["y_tgt"]["lang"] == "de"
    # nested subsets: 5, 10, and all 18 (1000 is capped at the training size)
    assert sorted(int(k) for k in s["subsets"]) == [5, 10, 18]
    for k in (5, 10, 18):
        assert [x.id for x in read_records(out / "subsets" / f"train_{k}.jsonl")] == [x.id for x in train[:k]]
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(x["id"], x["reasons"]) for x in rejects] == [
        ("alpaca-4", ["empty_y_en"]), ("alpaca-3", ["lang_x_tgt"]), ("alpaca-5", ["segment_echo_x_tgt"])]
    echoed = rejects[2]
    assert echoed["failures"] == [{"field": "x_tgt", "segment": "Say this: ECHOME back to me", "reason": "echo",
                                   "detail": "fake-de returned the segment unchanged"}]
    assert echoed["record"]["x_tgt"] is None and echoed["record"]["y_tgt"]
    # The echo was not cached: the next build asks for it again.
    with sqlite3.connect(out / "translations.sqlite") as c:
        assert c.execute("SELECT COUNT(*) FROM translations WHERE source LIKE '%ECHOME%'").fetchone()[0] == 0
    assert "| failed segments | 1 |" in (out / "summary.md").read_text()
    assert json.loads((out / "summary.json").read_text())["rejects_by_reason"] == s["rejects_by_reason"]
    assert "| rejects | 3 |" in (out / "summary.md").read_text()


def test_build_is_deterministic_and_parquet_matches_jsonl(fake, tmp_path):
    src = _alpaca(tmp_path / "a.json", 12)
    build_dataset(_cfg(src), tmp_path / "o1", progress=False)
    s2 = build_dataset(_cfg(src), tmp_path / "o1", progress=False)  # same dir: everything cached
    assert s2["translation"]["translated"] == 0 and s2["translation"]["cache_hits"] == s2["translation"]["unique_segments"]
    build_dataset(_cfg(src), tmp_path / "o2", progress=False)
    assert (tmp_path / "o1/train.jsonl").read_bytes() == (tmp_path / "o2/train.jsonl").read_bytes()
    build_dataset(_cfg(src, format="parquet"), tmp_path / "o3", progress=False)
    assert read_records(tmp_path / "o3/train.parquet") == read_records(tmp_path / "o1/train.jsonl")


def test_killed_build_resumes_to_identical_files(fake, tmp_path):
    src = _alpaca(tmp_path / "a.json", 24)
    cfg_json = json.dumps({"lang": "de", "data": {"source": "alpaca", "path": str(src), "n": 50,
                                                   "translator": {"kind": "fake-de", "batch_size": 2},
                                                   "val_fraction": 0.1, "subsets": [5, 10], "seed": 3}})
    script = textwrap.dedent(f"""
        import json, sys
        import fake_translator
        from clo.config import config_from_dict
        from clo.data.build import build_dataset
        build_dataset(config_from_dict(json.loads({cfg_json!r})), sys.argv[1], progress=False)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]), FAKE_DELAY="0.2")
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", script, str(killed)], env=env)
    db = killed / "translations.sqlite"
    deadline = time.time() + 120
    rows = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as c:
                    rows = c.execute("SELECT COUNT(*) FROM translations").fetchone()[0]
            except sqlite3.OperationalError:
                rows = 0
            if rows >= 6:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "train.jsonl").exists()
    resumed = build_dataset(_cfg(src, subsets=[5, 10], translator={"kind": "fake-de", "batch_size": 2}), killed,
                            progress=False)
    assert resumed["translation"]["cache_hits"] >= 6
    assert resumed["translation"]["translated"] == resumed["translation"]["unique_segments"] - resumed["translation"]["cache_hits"]
    clean = tmp_path / "clean"
    build_dataset(_cfg(src, subsets=[5, 10], translator={"kind": "fake-de", "batch_size": 2}), clean, progress=False)
    for name in ("train.jsonl", "validation.jsonl", "rejects.jsonl", "subsets/train_5.jsonl", "subsets/train_10.jsonl"):
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name


def _rec(i, **kw):
    return CrossLingualRecord(id=f"r{i}", tgt_lang="de", x_en=f"x{i}", y_en=f"y{i}", x_tgt=f"xd{i}", y_tgt=f"yd{i}", **kw)


def test_views_exact():
    recs = [_rec(0), _rec(1)]
    assert make_view("sft", recs) == [
        {"id": "r0/en", "prompt": "x0", "completion": "y0", "lang": "en"},
        {"id": "r0/de", "prompt": "xd0", "completion": "yd0", "lang": "de"},
        {"id": "r1/en", "prompt": "x1", "completion": "y1", "lang": "en"},
        {"id": "r1/de", "prompt": "xd1", "completion": "yd1", "lang": "de"},
    ]
    assert [r["id"] for r in make_view("sft-eng", recs)] == ["r0/en", "r1/en"]
    assert [r["completion"] for r in make_view("sft-tgt", recs)] == ["yd0", "yd1"]
    dpo = make_view("dpo", recs, seed=0)
    assert sorted(dpo, key=lambda r: r["id"]) == [
        {"id": "r0/de", "prompt": "xd0", "chosen": "yd0", "rejected": "y0"},
        {"id": "r0/en", "prompt": "x0", "chosen": "y0", "rejected": "yd0"},
        {"id": "r1/de", "prompt": "xd1", "chosen": "yd1", "rejected": "y1"},
        {"id": "r1/en", "prompt": "x1", "chosen": "y1", "rejected": "yd1"},
    ]
    import random

    expected = [{"id": "r0/en"}, {"id": "r0/de"}, {"id": "r1/en"}, {"id": "r1/de"}]
    random.Random(0).shuffle(expected)
    assert [r["id"] for r in dpo] == [e["id"] for e in expected]
    assert make_view("clo", recs)[1] == {"id": "r1", "tgt_lang": "de", "x_en": "x1", "y_en": "y1", "x_tgt": "xd1",
                                         "y_tgt": "yd1"}
    with pytest.raises(ValueError, match="unknown view 'nope'"):
        make_view("nope", recs)


def test_cli_build_and_view(fake, tmp_path, capsys):
    from clo.cli import main

    src = _alpaca(tmp_path / "a.json", 6)
    out = tmp_path / "out"
    rc = main(["data", "build", "--source", "alpaca", "--path", str(src), "--lang", "de", "--n", "4",
               "--translator", "fake-de", "--out", str(out), "--no-progress", "--set", "data.subsets=[2]"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| English examples read | 4 |" in printed
    rc = main(["data", "view", str(out / "train.jsonl"), "--view", "dpo", "--out", str(tmp_path / "dpo.jsonl")])
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "dpo.jsonl").read_text().splitlines()]
    n_train = len(read_records(out / "train.jsonl"))
    assert len(rows) == 2 * n_train and set(rows[0]) == {"id", "prompt", "chosen", "rejected"}
    rc = main(["data", "build", "--source", "alpaca", "--path", str(src), "--translator", "nope", "--out", str(out)])
    assert rc == 2
    assert "unknown translator kind 'nope'" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"id": "r0", "tgt_lang": "de"}\n')
    rc = main(["data", "view", str(tmp_path / "bad.jsonl"), "--view", "sft", "--out", str(tmp_path / "v.jsonl")])
    assert rc == 2
    assert "bad.jsonl:1: field 'x_en' missing field" in capsys.readouterr().err


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("clo data build:")]


def test_cli_empty_source_is_an_error(fake, tmp_path, capsys):
    from clo.cli import main

    for content, says in (("[]", "no alpaca examples"), ("", "empty file (0 bytes)")):
        src = tmp_path / "empty.json"
        src.write_text(content)
        rc = main(["data", "build", "--source", "alpaca", "--path", str(src), "--lang", "de", "--translator",
                   "fake-de", "--out", str(tmp_path / "out"), "--no-progress"])
        assert rc == 2
        (line,) = _errors(capsys.readouterr().err)
        assert line.startswith(f"clo data build: {src}: ") and says in line, line
    # Examples exist, but none is short enough.
    src = _alpaca(tmp_path / "a.json", 3)
    rc = main(["data", "build", "--source", "alpaca", "--path", str(src), "--translator", "fake-de",
               "--out", str(tmp_path / "out"), "--no-progress", "--set", "data.max_chars=10"])
    assert rc == 2
    (line,) = _errors(capsys.readouterr().err)
    assert f"{src}: no alpaca examples with len(x_en) + len(y_en) <= 10" in line


def test_cli_build_where_nothing_passes_is_an_error(tmp_path, capsys):
    from clo.cli import main

    # The identity translator leaves everything English: every record fails the language check.
    src = _alpaca(tmp_path / "a.json", 4)
    out = tmp_path / "out"
    rc = main(["data", "build", "--source", "alpaca", "--path", str(src), "--lang", "de", "--translator", "identity",
               "--out", str(out), "--no-progress"])
    assert rc == 2
    (line,) = _errors(capsys.readouterr().err)
    assert line == (f"clo data build: {out / 'train.jsonl'}: no record passed (4 read, 4 rejected: lang_x_tgt 4, "
                    f"lang_y_tgt 4); see {out / 'rejects.jsonl'}")
    assert (out / "train.jsonl").read_text() == ""
    assert json.loads((out / "summary.json").read_text())["records_out"] == 0


def test_cli_damaged_cache_names_the_fix(fake, tmp_path, capsys):
    from clo.cli import main

    src = _alpaca(tmp_path / "a.json", 4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "translations.sqlite").write_bytes(b"SQLite format 3\x00" + b"\xab" * 8000)
    args = ["data", "build", "--source", "alpaca", "--path", str(src), "--lang", "de", "--translator", "fake-de",
            "--out", str(out), "--no-progress", "--set", "data.subsets=[2]"]
    assert main(args) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert f"{out / 'translations.sqlite'}: not a usable translation cache" in line and "--rebuild-cache" in line
    assert main([*args, "--rebuild-cache"]) == 0
    assert "| English examples read | 4 |" in capsys.readouterr().out
    (aside,) = out.glob("translations.sqlite.broken-*")
    assert aside.read_bytes().startswith(b"SQLite format 3\x00\xab")  # kept for inspection
