"""The persistent translation cache: SQLite, one row per translated segment.

A row is keyed by (translator fingerprint, source language, target language, source text); the
fingerprint names the translator kind, the model and every setting that changes the output
(prompt version, decoding), so two configurations never read each other's translations.

Writes are transactions of one whole batch (:meth:`TranslationCache.put_many`): a process killed
at any moment leaves either all of a batch or none of it, never half, which is what makes a
resumed build byte-identical to an uninterrupted one (see :mod:`clo.data.translate`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

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


class TranslationCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60)
            # WAL: readers never block the writer, and a killed writer cannot corrupt the file.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{self.path}: not a usable translation cache (SQLite): {e}") from None

    def get_many(self, translator: str, src: str, tgt: str, texts: Iterable[str]) -> dict[str, str]:
        """The cached translations of ``texts`` (missing ones are absent from the result)."""
        texts = list(dict.fromkeys(texts))
        out: dict[str, str] = {}
        with self._lock:
            for i in range(0, len(texts), 500):  # SQLite's bound-parameter limit
                chunk = texts[i:i + 500]
                q = ("SELECT source, target FROM translations WHERE translator=? AND src_lang=? AND tgt_lang=? "
                     f"AND source IN ({','.join('?' * len(chunk))})")
                out.update(self._db.execute(q, (translator, src, tgt, *chunk)).fetchall())
        return out

    def put_many(self, translator: str, src: str, tgt: str, pairs: dict[str, str]) -> None:
        """Store all ``pairs`` (source -> target) in one transaction."""
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO translations (translator, src_lang, tgt_lang, source, target) "
                "VALUES (?, ?, ?, ?, ?)",
                [(translator, src, tgt, s, t) for s, t in pairs.items()],
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM translations").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
