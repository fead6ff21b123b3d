"""Host-memory tier: an LRU cache of chunk records bounded by bytes.

It sits above the disk tier (DESIGN section 4). Least-recently-used is the baseline eviction
policy that the value-based policy (compute saved per byte) will be compared against. On hosts with
a CUDA device the tensors are pinned, so copies to the accelerator run at full link speed and can
overlap compute; elsewhere pinning would only cost memory, so it is skipped.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch

from chunkcache.kv.record import ISOLATED, ChunkRecord, host_copy
from chunkcache.store.base import CacheCounters, KVTier

log = logging.getLogger(__name__)


def record_bytes(record: ChunkRecord) -> int:
    """Bytes a record's tensors take: K, V and the attention statistics."""
    stats = (t for t in (record.inter, record.intra, record.outside) if t is not None)
    return record.nbytes + sum(t.numel() * t.element_size() for t in stats)


class MemoryTier(KVTier):
    """Records in host memory, at most ``capacity_bytes`` of tensors, least recently used evicted first.

    A record larger than the whole capacity is not kept (and any older copy of it is dropped, so a
    stale version is never served).
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.counters = CacheCounters()
        self.evictions = 0
        self._pin = torch.cuda.is_available()
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], tuple[ChunkRecord, int]] = OrderedDict()
        self._by_chunk: dict[str, set[str]] = {}
        self._bytes = 0

    def get(self, chunk_id: str, variant: str = ISOLATED) -> ChunkRecord | None:
        """The record (now most recently used), or None."""
        key = (chunk_id, variant)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        self.counters.add(hits=int(entry is not None), misses=int(entry is None))
        return entry[0] if entry is not None else None

    def put(self, record: ChunkRecord) -> None:
        """Keep ``record`` on the host (pinned on CUDA hosts), evicting least recently used records to fit."""
        host = self._to_host(record)
        size = record_bytes(host)
        key = (record.chunk_id, record.variant)
        with self._lock:
            self._remove(key)
            if size > self.capacity_bytes:
                log.debug("record %s/%s (%d bytes) exceeds the memory tier's capacity", *key, size)
                return
            self._entries[key] = (host, size)
            self._by_chunk.setdefault(record.chunk_id, set()).add(record.variant)
            self._bytes += size
            while self._bytes > self.capacity_bytes:
                self._remove(next(iter(self._entries)))
                self.evictions += 1

    def variants(self, chunk_id: str) -> list[str]:
        """Variant names held for ``chunk_id``, sorted."""
        with self._lock:
            return sorted(self._by_chunk.get(chunk_id, ()))

    def delete(self, chunk_id: str) -> int:
        """Drop every variant of ``chunk_id``; return how many were dropped."""
        with self._lock:
            variants = list(self._by_chunk.get(chunk_id, ()))
            for variant in variants:
                self._remove((chunk_id, variant))
            return len(variants)

    def chunk_tokens(self) -> Iterator[tuple[str, list[int]]]:
        """(chunk id, token ids) of every chunk held (a snapshot)."""
        with self._lock:
            firsts = {cid: rec.token_ids for (cid, _), (rec, _) in self._entries.items()}
        yield from firsts.items()

    def __contains__(self, chunk_id: object) -> bool:
        with self._lock:
            return chunk_id in self._by_chunk

    def clear(self) -> None:
        """Drop every record; the lookup counters are kept."""
        with self._lock:
            self._entries.clear()
            self._by_chunk.clear()
            self._bytes = 0

    def stats(self) -> dict[str, Any]:
        """Record and chunk counts, bytes held against capacity, evictions, and lookup counters."""
        with self._lock:
            sizes = {
                "records": len(self._entries),
                "chunks": len(self._by_chunk),
                "bytes": self._bytes,
                "capacity_bytes": self.capacity_bytes,
                "evictions": self.evictions,
            }
        return {"tier": "memory", "pinned": self._pin, **sizes, **self.counters.snapshot()}

    def _remove(self, key: tuple[str, str]) -> None:
        """Forget ``key`` if held (caller holds the lock)."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._bytes -= entry[1]
        variants = self._by_chunk[key[0]]
        variants.discard(key[1])
        if not variants:
            del self._by_chunk[key[0]]

    def _to_host(self, record: ChunkRecord) -> ChunkRecord:
        """``record`` with K/V in host memory, pinned when a CUDA device can use that."""
        tensors = (*record.keys, *record.values)
        if all(t.device.type == "cpu" and (t.is_pinned() or not self._pin) for t in tensors):
            return record

        # one host buffer for all layers, so a request loads it back in one copy
        return dataclasses.replace(record, keys=host_copy(record.keys, pin=self._pin),
                                   values=host_copy(record.values, pin=self._pin))
