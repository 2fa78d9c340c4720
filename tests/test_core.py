"""The shared core: atomic writes, UTF-8 and JSON reading with located errors, the registry."""

import json
import os
import threading

import pytest

from clo import io
from clo.errors import CloError, InputError, located
from clo.registry import Registry, UnknownName, unknown_name_message


class OwnError(ValueError):
    pass


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "out.json"
    io.write_json(target, {"a": "é", "b": [1, 2]})
    assert target.read_text(encoding="utf-8") == '{\n  "a": "é",\n  "b": [\n    1,\n    2\n  ]\n}\n'
    io.atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_atomic_write_gets_the_mode_a_plain_open_gets(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("x")
    io.atomic_write(tmp_path / "atomic", "x")
    assert (tmp_path / "atomic").stat().st_mode == plain.stat().st_mode


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "rows.jsonl"
    io.write_jsonl(target, [{"i": 1}])

    def rows():
        yield {"i": 2}
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        io.write_jsonl(target, rows())
    assert target.read_text() == '{"i": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_concurrent_writers_use_distinct_temporaries(tmp_path):
    # With one fixed temporary name two writers interleave into it and one os.replace finds it gone.
    target = tmp_path / "shared.json"
    errors: list[BaseException] = []

    def write(i):
        try:
            for _ in range(50):
                io.write_json(target, {"writer": i, "pad": "x" * 10000}, fsync=False)
        except BaseException as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(target.read_text())["pad"] == "x" * 10000
    assert os.listdir(tmp_path) == ["shared.json"]


def test_atomic_path_and_dir(tmp_path):
    with io.atomic_path(tmp_path / "w.bin") as tmp:
        tmp.write_bytes(b"abc")
        assert not (tmp_path / "w.bin").exists()
    assert (tmp_path / "w.bin").read_bytes() == b"abc"
    old = tmp_path / "model"
    old.mkdir()
    (old / "stale").write_text("old")
    with io.atomic_dir(old) as d:
        (d / "config.json").write_text("{}")
    assert sorted(p.name for p in old.iterdir()) == ["config.json"]
    with pytest.raises(ZeroDivisionError), io.atomic_dir(tmp_path / "never") as d:
        (d / "x").write_text("1")
        1 / 0  # noqa: B018
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "w.bin"]


def test_read_text_names_line_and_column_of_a_bad_byte(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes("line one\nzwei: \u00fc\ncaf".encode() + b"\xe9 x\n")
    with pytest.raises(InputError) as e:
        io.read_text(f)
    # line 3, column 4 (1-based): "caf" then the Latin-1 byte
    assert str(e.value) == f"{f}:3: not valid UTF-8 (byte 0xe9 at column 4); save the file as UTF-8"
    assert (e.value.path, e.value.line) == (str(f), 3)
    assert isinstance(e.value, CloError) and isinstance(e.value, ValueError)
    with pytest.raises(OwnError, match=r"^.*t\.txt:3: not valid UTF-8"):
        io.read_text(f, error=located(OwnError))


def test_read_json_and_jsonl_name_the_line(tmp_path):
    f = tmp_path / "a.json"
    f.write_text('{\n  "a": 1,\n  "b": ,\n}\n')
    with pytest.raises(InputError, match=r"a\.json:3: malformed JSON: Expecting value \(column 8\)"):
        io.read_json(f)
    g = tmp_path / "b.jsonl"
    g.write_bytes(b'{"i": 1}\n\n{"i": 2}\n{"i": \xff}\n')
    got = []
    with pytest.raises(InputError, match=r"b\.jsonl:4: not valid UTF-8 \(byte 0xff at column 7\)"):
        got.extend(io.iter_jsonl(g))
    assert got == [(1, {"i": 1}), (3, {"i": 2})]
    g.write_text('{"i": 1}\n{"i": 2\n')
    with pytest.raises(InputError, match=r"b\.jsonl:2: malformed JSON: Expecting ',' delimiter"):
        list(io.iter_jsonl(g))


def test_registry_suggests_the_closest_name():
    reg: Registry[int] = Registry("translator kind")
    reg.register("m2m100", 1)

    @reg.register("causal")
    def causal():
        return 2

    assert reg.get("m2m100") == 1 and reg["causal"] is causal and "causal" in reg
    assert reg.names() == ["m2m100", "causal"] and list(reg) == ["m2m100", "causal"] and len(reg) == 2
    with pytest.raises(UnknownName) as e:
        reg.get("m2m")
    assert str(e.value) == "unknown translator kind 'm2m'; did you mean 'm2m100'? known: m2m100, causal"
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match="unknown translator kind 'zzz'; known: m2m100, causal$"):
        reg.check("zzz")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("causal", 3)
    reg.register("causal", 3, replace=True)
    assert reg["causal"] == 3
    assert reg.get("nope", None) is None and reg.pop("causal") == 3 and "causal" not in reg
    reg["causal"] = 4  # a mapping's interface too (monkeypatch.setitem)
    del reg["causal"]
    assert reg.names() == ["m2m100"]
    assert unknown_name_message("view", "dop", ["sft", "dpo", "clo"]) == \
        "unknown view 'dop'; did you mean 'dpo'? known: sft, dpo, clo"


def test_registries_answer_a_misspelt_name_with_the_closest(capsys, tmp_path):
    from clo import cli
    from clo.data.config import TranslatorConfig

    with pytest.raises(ValueError, match=r"unknown translator kind 'seq2sq'; did you mean 'seq2seq'\? known: "):
        TranslatorConfig(kind="seq2sq")
    records = tmp_path / "r.jsonl"
    records.write_text("")
    assert cli.main(["data", "view", str(records), "--view", "dop", "--output", str(tmp_path / "v.jsonl")]) == 2
    assert capsys.readouterr().err == (
        "clo data view: unknown view 'dop'; did you mean 'dpo'? known: sft, sft-eng, sft-tgt, dpo, clo\n")


def test_shared_data_is_looked_for_beside_the_repository_only(monkeypatch):
    from clo import paths

    monkeypatch.delenv("CLO_SHARED_DATA", raising=False)
    root = paths.repo_root()
    assert paths.shared_data_candidates() == [p / "shared" / "data" for p in (root, *root.parents)]
    monkeypatch.setenv("CLO_SHARED_DATA", "/elsewhere/data")
    assert [str(p) for p in paths.shared_data_candidates()] == ["/elsewhere/data"]


def _import_graph() -> dict[str, set[str]]:
    """Module -> the clo modules it imports, every import counted (inside functions too), but not
    those under ``if TYPE_CHECKING:`` (never executed)."""
    import ast
    from pathlib import Path

    import clo

    root = Path(clo.__file__).parent.parent
    mods = {}
    for p in root.joinpath("clo").rglob("*.py"):
        parts = p.relative_to(root).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        todo = [ast.parse(p.read_text(encoding="utf-8"))]
        while todo:
            node = todo.pop()
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                todo += node.orelse
                continue
            todo += ast.iter_child_nodes(node)
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # `from pkg import submodule` imports the submodule; any other name, the module itself.
                subs = [f"{node.module}.{a.name}" for a in node.names]
                names = subs + ([node.module] if any(n not in mods for n in subs) else [])
            else:
                continue
            graph[m] |= {n for n in names if n in mods and n != m}
    return graph


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if there is one (depth-first)."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph[node]):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_the_shared_core_data_and_report_modules_are_in_no_import_cycle():
    graph = _import_graph()
    assert _cycle_through({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a") == ["a", "b", "c", "a"]
    core = [m for m in graph if m.startswith(("clo.data", "clo.report")) or m in (
        "clo.io", "clo.errors", "clo.registry", "clo.fingerprints", "clo.paths", "clo.config",
        "clo.config_base", "clo.languages", "clo.formatting", "clo.cli")]
    assert len(core) > 30
    cycles = {m: c for m in core if (c := _cycle_through(graph, m))}
    assert cycles == {}
