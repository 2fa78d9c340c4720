"""Reading and writing files the one way clo does it.

Writes are atomic: the content goes to a temporary file with a unique name in the target's
directory (so two writers never share one), is flushed to disk, then replaces the target with
``os.replace``; a killed write leaves the old file or none, never a truncated one. Reads of text
are UTF-8, and bytes that are not name the file, line and column. JSON and JSONL errors name the
file and line. Every reading function takes ``error``, the factory of the exception to raise
(:class:`clo.errors.InputError` by default), so each module keeps its own user-facing error type.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from clo.errors import ErrorFactory, InputError

__all__ = [
    "atomic_dir", "atomic_open", "atomic_path", "atomic_write", "decode_utf8", "iter_jsonl",
    "read_json", "read_text", "write_json", "write_jsonl",
]


# -- atomic writes -----------------------------------------------------------------------------------

def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp and mkdtemp create owner-only entries; what replaces a target gets the mode a plain
# open() or mkdir() would have given it.
_UMASK = _current_umask()


def _temp_name(path: Path) -> Path:
    """A fresh, unique name beside ``path`` (created empty, so no other writer takes it). Hidden and
    ending in ``.tmp``, so uploads and listings leave a stray one out."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_UMASK)
    return Path(name)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` for a library that writes to a path itself (``torch.save``,
    ``pq.write_table``); on success it replaces ``path``, on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8",
                fsync: bool = True) -> Iterator[IO]:
    """``open(path, mode)`` whose content appears at ``path`` all at once when the block ends."""
    binary = "b" in mode
    with atomic_path(path, fsync=False) as tmp, open(tmp, mode, encoding=None if binary else encoding) as f:
        yield f
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def atomic_write(path: str | Path, data: str | bytes, encoding: str = "utf-8", fsync: bool = True) -> Path:
    """Write ``data`` (text as ``encoding``, or bytes) to ``path`` atomically."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", encoding=encoding, fsync=fsync) as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary directory beside ``path`` to fill; on success it takes ``path``'s place (an
    existing ``path`` is replaced), on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | Path, obj: Any, indent: int | None = 2, sort_keys: bool = False,
               fsync: bool = True) -> Path:
    """``obj`` as JSON (UTF-8, non-ASCII kept, a final newline), atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False, default=str)
    return atomic_write(path, text + "\n", fsync=fsync)


def write_jsonl(path: str | Path, rows: Iterable[Any], fsync: bool = True) -> Path:
    """One JSON object per line (UTF-8, non-ASCII kept), atomically."""
    with atomic_open(path, fsync=fsync) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


# -- reading ---------------------------------------------------------------------------------------

def decode_utf8(data: bytes, path: str | Path, first_line: int = 1, error: ErrorFactory = InputError) -> str:
    """``data`` decoded as UTF-8; a byte that is not names the file, line and column (lines counted
    from ``first_line``, for a chunk of a larger file)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise error(path, line, f"not valid UTF-8 (byte 0x{data[e.start]:02x} at column {col}); "
                                "save the file as UTF-8") from None


def read_text(path: str | Path, error: ErrorFactory = InputError) -> str:
    """The UTF-8 text of ``path`` (see :func:`decode_utf8`)."""
    return decode_utf8(Path(path).read_bytes(), path, error=error)


def read_json(path: str | Path, error: ErrorFactory = InputError, text: str | None = None) -> Any:
    """The JSON value in ``path`` (or in ``text``, read from it); malformed JSON names file and line."""
    text = read_text(path, error) if text is None else text
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(path, e.lineno, f"malformed JSON: {e.msg} (column {e.colno})") from None


def iter_jsonl(path: str | Path, error: ErrorFactory = InputError) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line, read as it streams; a line that is not UTF-8
    or not JSON names the file and line."""
    with open(path, "rb") as f:
        for lineno, data in enumerate(f, 1):
            raw = decode_utf8(data, path, lineno, error)
            if not raw.strip():
                continue
            try:
                yield lineno, json.loads(raw)
            except json.JSONDecodeError as e:
                raise error(path, lineno, f"malformed JSON: {e.msg} (column {e.colno})") from None
