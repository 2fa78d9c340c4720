"""No import cycle among clo's modules, imports inside functions counted.

:func:`import_graph` reads every module of a package with :mod:`ast` (nothing is imported) and
:func:`import_cycles` returns its strongly connected components of more than one module (or a
module importing itself): each one is a cycle, whether the imports in it run at load time or
inside a function. Imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_files(root: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` of ``package`` and everything under it, found below ``root``."""
    base = root.joinpath(*package.split("."))
    out = {}
    for f in sorted(base.rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """``(imported module, names)`` of every import statement of ``tree``, at any depth (in
    functions, classes, try blocks), but for those under ``if TYPE_CHECKING:``."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                target = ".".join(pkg + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [a.name for a in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(package: str = "clo", root: Path = SRC) -> dict[str, set[str]]:
    """``{module: the modules of the package it imports}``. ``from pkg import name`` is an edge to
    ``pkg.name`` when that is a module, else to ``pkg``; the parent packages Python initialises on
    the way (``import a.b`` runs ``a/__init__``) are not edges of their own."""
    files = module_files(root, package)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for target, names in _imports(tree, mod, path.name == "__init__.py"):
            if not names:
                if target in files:
                    graph[mod].add(target)
                continue
            for name in names:
                sub = f"{target}.{name}"
                if sub in files:
                    graph[mod].add(sub)
                elif target in files:
                    graph[mod].add(target)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` that are cycles (Tarjan's algorithm,
    iterative), each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1 or node in graph[node]:
                    out.append(sorted(comp))
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# the helper itself, on small packages written here


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = tmp_path.joinpath(*name.split("/"))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text), encoding="utf-8")
    return tmp_path


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import f\n",
        "pkg/b.py": "def f():\n    from pkg import c\n    return c\n",
        "pkg/c.py": "import pkg.a\n",
        "pkg/d.py": "from pkg import a\n",  # imports into the cycle: not part of it
    })
    graph = import_graph("pkg", root)
    assert graph["pkg.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg.a"}
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_type_checking_imports_and_parent_packages_are_no_edges(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "from pkg.a import x\n",
        "pkg/a.py": ("from typing import TYPE_CHECKING\nx = 1\n"
                     "if TYPE_CHECKING:\n    from pkg.b import y\nelse:\n    import os\n"),
        "pkg/b.py": "from pkg.a import x\ny = 2\n",
        "pkg/sub/__init__.py": "from . import leaf\n",
        "pkg/sub/leaf.py": "from ..a import x\nfrom .. import b\n",
    })
    graph = import_graph("pkg", root)
    assert graph["pkg.a"] == set()
    assert graph["pkg.sub"] == {"pkg.sub.leaf"}
    assert graph["pkg.sub.leaf"] == {"pkg.a", "pkg.b"}
    assert import_cycles(graph) == []


def test_two_separate_cycles_and_a_self_import(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import pkg.b\n", "pkg/b.py": "import pkg.a\n",
        "pkg/c.py": "from pkg import d\n", "pkg/d.py": "from pkg.c import *\n",
        "pkg/e.py": "import pkg.e\n",
    })
    assert import_cycles(import_graph("pkg", root)) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"], ["pkg.e"]]


# ---------------------------------------------------------------------------------------------
# clo


def test_no_import_cycle_anywhere_in_clo():
    graph = import_graph("clo")
    # every module is read, and the edges that once closed the model-loading cycle are still seen
    assert len(graph) > 80 and "clo.identity" in graph["clo.train.saved"] and "clo.train.saved" in graph["clo.models"]
    assert import_cycles(graph) == []
