"""The interface every KV storage tier implements, and the hit/miss counters tiers keep.

A tier maps (chunk id, variant) to a :class:`~chunkcache.kv.record.ChunkRecord` (DESIGN section 4).
Tiers differ in speed and durability (host memory, local disk, later accelerator memory and a remote
tier); :class:`~chunkcache.store.tiered.TieredStore` stacks them, fastest first, behind the same
interface, so callers never care how many tiers there are.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from chunkcache.kv.record import ISOLATED, ChunkRecord


class CacheCounters:
    """Lookup counters of one tier: hits, misses, and corrupt entries found (and dropped).

    A corrupt entry is also counted as a miss, since the caller gets nothing back. This in-memory
    version lives as long as its tier; :class:`~chunkcache.store.counters.SqliteCounters` persists them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._corrupt = 0

    def add(self, hits: int = 0, misses: int = 0, corrupt: int = 0) -> None:
        """Add to the counters (thread-safe)."""
        with self._lock:
            self._hits += hits
            self._misses += misses
            self._corrupt += corrupt

    def snapshot(self) -> dict[str, Any]:
        """Current ``hits``, ``misses``, ``corrupt`` and ``hit_rate`` (None before the first lookup)."""
        with self._lock:
            return self._as_dict(self._hits, self._misses, self._corrupt)

    @staticmethod
    def _as_dict(hits: int, misses: int, corrupt: int) -> dict[str, Any]:
        lookups = hits + misses
        return {
            "hits": hits,
            "misses": misses,
            "corrupt": corrupt,
            "hit_rate": hits / lookups if lookups else None,
        }


FETCH_THREADS = 8  # concurrent reads of one request's records from a slow tier


def fetch_concurrently(get, keys: list[tuple[str, str]]) -> list[ChunkRecord | None]:
    """``get(chunk_id, variant)`` of every key on a few threads. File reads, socket reads and sha256 release
    the GIL, so reads and checksum verification of several records overlap."""
    if len(keys) < 2:
        return [get(*key) for key in keys]
    with ThreadPoolExecutor(min(FETCH_THREADS, len(keys))) as pool:
        return list(pool.map(lambda key: get(*key), keys))


class KVTier(ABC):
    """One storage tier of chunk KV records, keyed by (chunk id, variant).

    Records handed out are shared, not copied: treat their tensors as read-only.
    Tiers are context managers; leaving the block calls :meth:`close`.
    """

    @abstractmethod
    def get(self, chunk_id: str, variant: str = ISOLATED) -> ChunkRecord | None:
        """The stored record, or None on a miss (including an entry found corrupt and dropped)."""

    # Tiers that read slowly (disk, Redis) set this: ``get_many`` then fetches a request's records at once.
    concurrent_reads: bool = False

    def get_many(self, keys: list[tuple[str, str]]) -> list[ChunkRecord | None]:
        """``get`` of every (chunk id, variant) in ``keys``, in order; concurrently where ``concurrent_reads``."""
        if self.concurrent_reads:
            return fetch_concurrently(self.get, keys)
        return [self.get(chunk_id, variant) for chunk_id, variant in keys]

    @abstractmethod
    def put(self, record: ChunkRecord) -> None:
        """Store ``record`` under (record.chunk_id, record.variant), replacing any previous one."""

    @abstractmethod
    def variants(self, chunk_id: str) -> list[str]:
        """Names of the variants stored for ``chunk_id``, sorted (empty when none)."""

    @abstractmethod
    def delete(self, chunk_id: str) -> int:
        """Remove every variant of ``chunk_id``; return how many were removed."""

    @abstractmethod
    def __contains__(self, chunk_id: object) -> bool:
        """Whether any variant of ``chunk_id`` is stored."""

    @abstractmethod
    def chunk_tokens(self) -> Iterator[tuple[str, list[int]]]:
        """(chunk id, token ids) of every chunk the tier holds, once each: what the serving engine indexes
        to find stored chunks inside plain prompts (engine/matcher.py)."""

    @abstractmethod
    def clear(self) -> None:
        """Remove every record (lookup counters are history and are kept)."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Sizes and lookup counters of this tier, as plain JSON-able values."""

    def pin(self, chunk_id: str) -> None:
        """Never evict ``chunk_id`` from this tier until :meth:`unpin` (a no-op for tiers that do not evict)."""

    def unpin(self, chunk_id: str) -> None:
        """Undo :meth:`pin` (a no-op for tiers that do not evict)."""

    def observe_recompute(self, chunk_id: str, variant: str, fraction: float) -> None:
        """A request reused this record and recomputed ``fraction`` of its tokens: input for value-based
        eviction (store/eviction/value.py); a no-op for tiers that do not evict."""

    def flush(self) -> None:
        """Wait until writes this tier made in the background are done (nothing by default)."""

    def close(self) -> None:
        """Release files or connections the tier holds (nothing by default)."""

    def __enter__(self) -> "KVTier":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
