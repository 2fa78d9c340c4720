"""Fingerprints of stage inputs: content digests, the fingerprint of an input tree, and which
dotted keys differ between two trees (what a refusal names). One definition for every stage
output that carries one: data builds, training directories, evaluation caches, grid markers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (files may be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_digest(path: str | Path) -> dict:
    """``{"sha256"}`` of a file's content; of a directory, the SHA-256 over the relative names and
    content digests of all its files (sorted; hidden ones such as ``.git/`` or ``.cache/`` left
    out) and their number, so any edit, addition or removal shows; a missing path is
    ``{"missing": True}`` (the stage reading it then says what is wrong). No path in it: a moved
    input is the same input."""
    path = Path(path)
    if path.is_file():
        return {"sha256": sha256_file(path)}
    if path.is_dir():
        h = hashlib.sha256()
        files = sorted(f for f in path.rglob("*") if f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(path).parts))
        for f in files:
            h.update(f.relative_to(path).as_posix().encode("utf-8") + b"\0")
            h.update(sha256_file(f).encode("ascii") + b"\n")
        return {"sha256": h.hexdigest(), "files": len(files)}
    return {"missing": True}


def fingerprint(inputs: Any) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of ``inputs``."""
    blob = json.dumps(inputs, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def flat(obj: Any, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    if isinstance(obj, dict):
        out: dict = {}
        for k, v in obj.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def differing_keys(old: dict, new: dict) -> list[str]:
    """The dotted keys whose values differ between two input trees (JSON-normalised first, so a
    tuple and the list it was stored as are equal)."""
    a, b = flat(json.loads(json.dumps(old, default=str))), flat(json.loads(json.dumps(new, default=str)))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
