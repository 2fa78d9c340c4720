"""The error of a bad record and the JSON-lines reader that raises it, apart from
:mod:`clo.data.records` so that the source readers (:mod:`clo.data.sources`) and the record
schema (which names a row's source format in its hints) import each other's module in one
direction only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from clo import io
from clo.errors import CloError

__all__ = ["RecordError", "iter_jsonl", "record_error"]


class RecordError(CloError, ValueError):
    """A bad record: names the file, the line (1-based) and the field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, reason: str):
        self.path, self.line, self.field, self.reason = str(path), line, field, reason
        where = f"{path}:{line}" if line is not None else str(path)
        what = f" field {field!r}" if field else ""
        super().__init__(f"{where}:{what} {reason}")


def record_error(path: str | Path, line: int | None, reason: str) -> RecordError:
    """The :class:`clo.errors.ErrorFactory` of records: a problem of the line, no field."""
    return RecordError(path, line, None, reason)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a malformed line, or one that is not
    UTF-8, names file and line (and the byte's column)."""
    return io.iter_jsonl(path, error=record_error)
