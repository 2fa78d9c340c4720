"""The one base class of clo's user-facing errors.

A :class:`CloError` is bad input (a config, a data file, a model spec, a run directory of another
configuration), never a bug: its message is one line naming the file, line and field, and ``clo``
prints it as ``clo COMMAND: error: MESSAGE`` and exits :data:`USER_ERROR_EXIT`. Anything else
that escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = ["USER_ERROR_EXIT", "CloError", "ErrorFactory", "InputError", "located", "where"]

USER_ERROR_EXIT = 2

#: Builds the error for a problem at ``(path, line or None, reason)``.
ErrorFactory = Callable[[str | Path, "int | None", str], Exception]


class CloError(Exception):
    """A user-facing error: a one-line message naming its file, line and field."""


def where(path: str | Path, line: int | None = None) -> str:
    """``path:line`` (``path`` alone when there is no line)."""
    return f"{path}:{line}" if line is not None else str(path)


class InputError(CloError, ValueError):
    """A bad input file, at ``path`` (and ``line``): ``PATH:LINE: REASON``."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{where(path, line)}: {reason}")


def located(cls: Callable[[str], Exception]) -> ErrorFactory:
    """An :data:`ErrorFactory` for an error class that takes one message: ``cls("PATH:LINE: REASON")``."""
    return lambda path, line, reason: cls(f"{where(path, line)}: {reason}")
