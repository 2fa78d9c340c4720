"""One generic registry: named entries, and an unknown name answered with the closest known one.

``Registry("translator kind")`` holds entries by name; ``get`` of an unknown name raises
:class:`UnknownName` (a ``KeyError`` and ``ValueError``) whose message is
``unknown translator kind 'm2m'; did you mean 'm2m100'? known: causal, m2m100, ...``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from clo.errors import CloError

__all__ = ["Registry", "UnknownName", "unknown_name_message"]

T = TypeVar("T")


class UnknownName(CloError, KeyError, ValueError):
    """A name no registry entry has (a user-facing error: ``clo`` prints the message and exits 2);
    ``str()`` is the one-line message (KeyError's would quote it)."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.message, self.name = message, name

    def __str__(self) -> str:
        return self.message


def unknown_name_message(what: str, name: object, known: Iterable[str]) -> str:
    """``unknown WHAT 'NAME'; did you mean 'CLOSE'? known: A, B, C`` (no hint when nothing is close)."""
    known = [str(k) for k in known]
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    return f"unknown {what} {name!r}{hint} known: {', '.join(known)}"


class Registry(Generic[T]):
    """Entries of one kind by name, in registration order (which is the order listings show)."""

    def __init__(self, what: str, entries: dict[str, T] | None = None):
        self.what = what
        self._entries: dict[str, T] = dict(entries or {})

    def register(self, name: str, entry: T | None = None, *, replace: bool = False):
        """Add ``entry`` under ``name``; without ``entry``, a decorator that registers what it decorates.
        Registering a taken name is an error unless ``replace``."""
        if entry is None:
            def decorator(obj: T) -> T:
                self.register(name, obj, replace=replace)
                return obj
            return decorator
        if name in self._entries and not replace:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str, *default: T) -> T:
        """``name``'s entry; an unknown name is :class:`UnknownName`, unless a ``default`` is given
        (as ``dict.get``'s, so that the registry also serves where a mapping is expected)."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            if default:
                return default[0]
            raise UnknownName(unknown_name_message(self.what, name, self._entries), name) from None

    def check(self, name: str) -> str:
        """``name`` if registered, else :class:`UnknownName` (for pydantic validators: a ValueError)."""
        self.get(name)
        return name

    def names(self) -> list[str]:
        return list(self._entries)

    def keys(self) -> list[str]:
        return self.names()

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._entries.items()))

    def values(self) -> list[T]:
        return list(self._entries.values())

    def filter(self, keep: Callable[[T], bool]) -> list[str]:
        """The names whose entry ``keep`` accepts."""
        return [n for n, e in self._entries.items() if keep(e)]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __setitem__(self, name: str, entry: T) -> None:
        self.register(name, entry, replace=True)

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def pop(self, name: str, *default: T) -> T:
        """Remove and return ``name``'s entry (``default`` where there is none, if given)."""
        return self._entries.pop(name, *default)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {self.names()})"
