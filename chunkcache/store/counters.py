"""Lookup counters that persist across processes, in a small SQLite file.

``chunkcache cache stats`` reports the hit rate so far, over every process that used the store, so
the disk tier's counters cannot live in memory. Each :meth:`SqliteCounters.add` is one
``UPDATE ... SET hits = hits + ?`` in autocommit mode on a WAL database with ``synchronous=NORMAL``
(no fsync per lookup), cheap enough to run on every lookup, and atomic when several processes share
the store. Counters are statistics: if the database stays locked past the timeout, the increment is
dropped with a warning rather than failing the read it describes.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from chunkcache.store.base import CacheCounters

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    hits INTEGER NOT NULL,
    misses INTEGER NOT NULL,
    corrupt INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (id, hits, misses, corrupt) VALUES (0, 0, 0, 0);
"""


class SqliteCounters(CacheCounters):
    """:class:`CacheCounters` kept in the SQLite file at ``path`` (created when missing)."""

    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)

    def add(self, hits: int = 0, misses: int = 0, corrupt: int = 0) -> None:
        """Add to the stored counters in one atomic UPDATE."""
        if not (hits or misses or corrupt):
            return
        try:
            with self._lock:
                self._conn.execute(
                    "UPDATE counters SET hits = hits + ?, misses = misses + ?, corrupt = corrupt + ? WHERE id = 0",
                    (hits, misses, corrupt),
                )
        except sqlite3.OperationalError as e:
            log.warning("cache counters not updated (%s): hits+%d misses+%d corrupt+%d", e, hits, misses, corrupt)

    def snapshot(self) -> dict[str, Any]:
        """Counters as stored now, including other processes' lookups."""
        with self._lock:
            hits, misses, corrupt = self._conn.execute(
                "SELECT hits, misses, corrupt FROM counters WHERE id = 0"
            ).fetchone()
        return self._as_dict(hits, misses, corrupt)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()
