"""Where the shared evaluation and demo data lives: ``$CLO_SHARED_DATA``, else a ``shared/data``
folder beside the repository or any of its parents (a checkout at ``~/src/clo`` finds
``~/src/shared/data``). The layout: ``belebele/``, ``mmlu/``, ``language_confusion/``, ``sft_en/``.

:func:`safe_name` turns a name that came from data or a config (an evaluation's output name, a
grid's model and variant names, a run label) into a file name, or refuses it: every path clo
builds from such a name goes through it, so that no name writes outside its output directory."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from clo.errors import CloError

# Names Windows reserves for devices, with or without an extension (``NUL.json`` is NUL too).
RESERVED_NAMES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)),
                            *(f"LPT{i}" for i in range(10)), "CONIN$", "CONOUT$"})
# Characters no file name may hold on one of the systems clo runs on or publishes to.
FORBIDDEN_CHARS = frozenset('/\\:*?"<>|')
# Bytes of a name, leaving room below the usual 255-byte limit for the suffixes clo appends
# (``.cache.jsonl``, ``.model_outputs.json``, ``.done.json``).
MAX_NAME_BYTES = 160


def cache_root() -> Path:
    """Where clo keeps what it builds once and reuses (converted models, file digests, reference
    log-probs, materialised checkpoints): ``$CLO_CACHE``, default ``~/.cache/clo``."""
    return Path(os.environ.get("CLO_CACHE", Path.home() / ".cache" / "clo"))


class UnsafeName(CloError, ValueError):
    """A name from data or a config that cannot be a file name; the message says which and why."""


def safe_name(name, what: str = "name") -> str:
    """``name`` as one file name, unchanged, or :class:`UnsafeName` naming ``what`` and the reason.

    Refused: a non-string or empty name, path separators and the characters Windows forbids
    (``/ \\ : * ? " < > |``), ``.`` and ``..`` and any name starting with ``.`` (hidden, and
    skipped by uploads), control and other non-printing characters, trailing spaces or dots,
    device names (``CON``, ``NUL``, ``COM1``, ... with or without an extension) and names longer
    than :data:`MAX_NAME_BYTES` bytes in UTF-8."""
    if not isinstance(name, str):
        raise UnsafeName(f"{what} {name!r}: not a string")
    shown = ascii(name) if len(name) <= 80 else ascii(name[:80]) + "..."

    def refuse(reason: str):
        return UnsafeName(f"{what} {shown}: {reason}; use letters, digits, _ . + - (a file name, not a path)")

    if not name:
        raise refuse("empty")
    bad = sorted({c for c in name if c in FORBIDDEN_CHARS})
    if bad:
        raise refuse(f"holds {' '.join(bad)}")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for c in name):
        raise refuse("holds a control or non-printing character")
    if name.startswith("."):
        raise refuse("'.', '..' and names starting with '.' are not file names here")
    if name != name.rstrip(" ."):
        raise refuse("ends with a space or a dot")
    if name.split(".")[0].upper() in RESERVED_NAMES:
        raise refuse("a device name on Windows")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise refuse(f"longer than {MAX_NAME_BYTES} bytes")
    return name


def inside(directory: str | Path, *names: str, what: str = "name") -> Path:
    """``directory / name / ...`` with every name checked by :func:`safe_name`."""
    path = Path(directory)
    for n in names:
        path = path / safe_name(n, what)
    return path


def repo_root() -> Path:
    # src/clo/paths.py -> the repository (an editable or source install); the working directory otherwise.
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def shared_data_candidates() -> list[Path]:
    env = os.environ.get("CLO_SHARED_DATA")
    if env:
        return [Path(env)]
    root = repo_root()
    return [p / "shared" / "data" for p in (root, *root.parents)]


def shared_data_dir() -> Path:
    candidates = shared_data_candidates()
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"shared data directory not found (looked in {', '.join(map(str, candidates))}); set "
        "CLO_SHARED_DATA to a directory laid out like shared/data (belebele/, mmlu/, language_confusion/, sft_en/)"
    )
