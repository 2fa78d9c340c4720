"""The persistent translation cache: SQLite, one row per translated segment.

A row is keyed by (translator fingerprint, source language, target language, source text); the
fingerprint names the translator kind, the model and every setting that changes the output
(prompt version, decoding), so two configurations never read each other's translations.

Writes are transactions of one whole batch (:meth:`TranslationCache.put_many`): a process killed
at any moment leaves either all of a batch or none of it, never half, which is what makes a
resumed build byte-identical to an uninterrupted one (see :mod:`clo.data.translators`).

Only successful translations are stored: a failed segment (empty, echoed, request failed) never
reaches :meth:`TranslationCache.put_many`, so a rerun asks for it again.

A file that is not a usable cache (a damaged SQLite page, another program's database, a table of
another shape) is refused with :class:`CacheError`, which names the file and how to rebuild it
(:func:`set_aside`, ``clo data build --rebuild-cache``); a zero-byte file is a new, empty cache.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from clo.errors import CloError

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS translations (
    translator TEXT NOT NULL,
    src_lang TEXT NOT NULL,
    tgt_lang TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now')),
    PRIMARY KEY (translator, src_lang, tgt_lang, source)
) WITHOUT ROWID;
"""
_COLUMNS = ("translator", "src_lang", "tgt_lang", "source", "target", "created")
_SIDECARS = ("-wal", "-shm")


class CacheError(CloError, ValueError):
    """The cache file cannot be used; the message names it and says how to rebuild it."""

    def __init__(self, path: Path, problem: str):
        super().__init__(
            f"{path}: not a usable translation cache ({problem}); rebuild it with "
            f"`clo data build ... --rebuild-cache` (moves it aside; every segment is translated again) "
            f"or delete it"
        )


def set_aside(path: str | Path) -> Path | None:
    """Move a cache file (and its WAL files) to ``<name>.broken-<time>``, so that the next
    :class:`TranslationCache` starts empty; the old file is kept for inspection. Returns the new
    name, or None when there was no file."""
    path = Path(path)
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.broken-{stamp}")
    for suffix in ("", *_SIDECARS):
        f = path.with_name(path.name + suffix)
        if f.exists():
            f.replace(target.with_name(target.name + suffix))
    log.warning("moved the translation cache %s to %s; starting a new one", path, target)
    return target


def _is_zero_bytes(path: Path) -> bool:
    # A fresh WAL database may keep everything in its -wal file: only a lone empty file is empty.
    wal = path.with_name(path.name + "-wal")
    return path.is_file() and path.stat().st_size == 0 and not (wal.is_file() and wal.stat().st_size)


class TranslationCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        if _is_zero_bytes(self.path):
            log.warning("%s is empty (0 bytes): starting a new translation cache there; every segment is "
                        "translated again", self.path)
        self._db = None
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60)
            # WAL: readers never block the writer, and a killed writer cannot corrupt the file.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._prepare()
        except sqlite3.DatabaseError as e:
            self._close_quietly()
            raise CacheError(self.path, f"SQLite: {e}") from None
        except CacheError:
            self._close_quietly()
            raise

    def _prepare(self) -> None:
        """Create the table in a new file; refuse another program's database, a table of another
        shape or a damaged file now, not hours into a build."""
        tables = [r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        if tables and "translations" not in tables:
            raise CacheError(self.path, f"an SQLite database of something else, with tables {tables}")
        self._db.executescript(_SCHEMA)
        cols = tuple(row[1] for row in self._db.execute("PRAGMA table_info(translations)"))
        if cols != _COLUMNS:
            raise CacheError(self.path, f"its translations table has columns {list(cols)}, expected {list(_COLUMNS)}")
        # quick_check reads every page once (about a second per few hundred MB): damage found
        # here costs nothing, damage found by a write at the end of a build costs the build.
        problems = [row[0] for row in self._db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise CacheError(self.path, "SQLite integrity check: " + "; ".join(problems))

    def _close_quietly(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()

    @contextlib.contextmanager
    def _guard(self):
        # A page damaged after opening (or by another process) surfaces on a read or write.
        try:
            yield
        except sqlite3.DatabaseError as e:
            raise CacheError(self.path, f"SQLite: {e}") from None

    def get_many(self, translator: str, src: str, tgt: str, texts: Iterable[str]) -> dict[str, str]:
        """The cached translations of ``texts`` (missing ones are absent from the result)."""
        texts = list(dict.fromkeys(texts))
        out: dict[str, str] = {}
        with self._lock, self._guard():
            for i in range(0, len(texts), 500):  # SQLite's bound-parameter limit
                chunk = texts[i:i + 500]
                q = ("SELECT source, target FROM translations WHERE translator=? AND src_lang=? AND tgt_lang=? "
                     f"AND source IN ({','.join('?' * len(chunk))})")
                out.update(self._db.execute(q, (translator, src, tgt, *chunk)).fetchall())
        return out

    def put_many(self, translator: str, src: str, tgt: str, pairs: dict[str, str]) -> None:
        """Store all ``pairs`` (source -> target) in one transaction."""
        with self._lock, self._guard(), self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO translations (translator, src_lang, tgt_lang, source, target) "
                "VALUES (?, ?, ?, ?, ?)",
                [(translator, src, tgt, s, t) for s, t in pairs.items()],
            )

    def __len__(self) -> int:
        with self._lock, self._guard():
            return self._db.execute("SELECT COUNT(*) FROM translations").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
