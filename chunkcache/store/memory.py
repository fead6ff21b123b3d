"""Memory tier: chunk records held in host (or accelerator) memory, bounded by bytes, evicted by a policy.

It sits above the disk tier (DESIGN section 4). Which records stay is the eviction policy's call
(store/eviction/: LRU, the baseline, LFU, or value-based — compute saved per byte); pinned chunks always
stay. On hosts with a CUDA device host tensors are pinned, so copies to the accelerator run at full link
speed and can overlap compute; elsewhere pinning would only cost memory, so it is skipped. The accelerator
tier (store/device.py) is this class with records kept on the device.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from typing import Any

import torch

from chunkcache.kv.record import ISOLATED, ChunkRecord, host_copy
from chunkcache.store.base import CacheCounters, KVTier
from chunkcache.store.eviction import EntryInfo, EvictionPolicy, Residency, make_policy

log = logging.getLogger(__name__)


def record_bytes(record: ChunkRecord) -> int:
    """Bytes a record's tensors take: K, V and the attention statistics."""
    stats = (t for t in (record.inter, record.intra, record.outside) if t is not None)
    return record.nbytes + sum(t.numel() * t.element_size() for t in stats)


class MemoryTier(KVTier):
    """Records in host memory, at most ``capacity_bytes`` of tensors, evicted by ``policy`` (a name or an
    :class:`EvictionPolicy`; LRU by default, the baseline).

    A record larger than the whole capacity (or than what pinned records leave) is not kept, and any older
    copy of it is dropped, so a stale version is never served.
    """

    tier_name = "memory"

    def __init__(self, capacity_bytes: int, policy: str | EvictionPolicy = "lru") -> None:
        self.residency = Residency(capacity_bytes, make_policy(policy) if isinstance(policy, str) else policy)
        self.counters = CacheCounters()
        self._pin = torch.cuda.is_available()
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], ChunkRecord] = {}
        self._by_chunk: dict[str, set[str]] = {}

    @property
    def capacity_bytes(self) -> int:
        return self.residency.capacity_bytes

    @property
    def evictions(self) -> int:
        return self.residency.evictions

    def get(self, chunk_id: str, variant: str = ISOLATED) -> ChunkRecord | None:
        """The record (its read counted by the policy), or None."""
        key = (chunk_id, variant)
        with self._lock:
            record = self._entries.get(key)
            if record is not None:
                self.residency.access(key)
        self.counters.add(hits=int(record is not None), misses=int(record is None))
        return record

    def peek(self, chunk_id: str, variant: str = ISOLATED) -> ChunkRecord | None:
        """The held record without counting a lookup or a use (for flow-down, not for requests)."""
        with self._lock:
            return self._entries.get((chunk_id, variant))

    def put(self, record: ChunkRecord) -> None:
        """Keep ``record`` in this tier's memory, evicting what the policy ranks lowest to fit."""
        held = self._place(record)
        key = (record.chunk_id, record.variant)
        info = EntryInfo(record_bytes(held), len(record.token_ids))
        with self._lock:
            self._forget(key)
            kept, evicted = self.residency.admit(key, info)
            for gone in evicted:
                self._forget(gone)
            if not kept:
                log.debug("record %s/%s (%d bytes) does not fit the %s tier", *key, info.nbytes, self.tier_name)
                return
            self._entries[key] = held
            self._by_chunk.setdefault(record.chunk_id, set()).add(record.variant)

    def variants(self, chunk_id: str) -> list[str]:
        """Variant names held for ``chunk_id``, sorted."""
        with self._lock:
            return sorted(self._by_chunk.get(chunk_id, ()))

    def delete(self, chunk_id: str) -> int:
        """Drop every variant of ``chunk_id``; return how many were dropped."""
        with self._lock:
            variants = list(self._by_chunk.get(chunk_id, ()))
            for variant in variants:
                self.residency.drop((chunk_id, variant))
                self._forget((chunk_id, variant))
            return len(variants)

    def pin(self, chunk_id: str) -> None:
        """Never evict ``chunk_id`` (its variants held now and later) until :meth:`unpin`."""
        with self._lock:
            self.residency.pin(chunk_id)

    def unpin(self, chunk_id: str) -> None:
        with self._lock:
            self.residency.unpin(chunk_id)

    def observe_recompute(self, chunk_id: str, variant: str, fraction: float) -> None:
        """Tell the policy how much of a reused record a request recomputed (value-based weighs it)."""
        with self._lock:
            self.residency.policy.observe_recompute((chunk_id, variant), fraction)

    def chunk_tokens(self) -> Iterator[tuple[str, list[int]]]:
        """(chunk id, token ids) of every chunk held (a snapshot)."""
        with self._lock:
            firsts = {cid: rec.token_ids for (cid, _), rec in self._entries.items()}
        yield from firsts.items()

    def __contains__(self, chunk_id: object) -> bool:
        with self._lock:
            return chunk_id in self._by_chunk

    def clear(self) -> None:
        """Drop every record; the lookup counters are kept."""
        with self._lock:
            self.residency.clear()
            self._entries.clear()
            self._by_chunk.clear()

    def stats(self) -> dict[str, Any]:
        """Record and chunk counts, bytes held against capacity, evictions, policy, and lookup counters."""
        with self._lock:
            sizes = {
                "records": len(self._entries),
                "chunks": len(self._by_chunk),
                "bytes": self.residency.nbytes,
                "capacity_bytes": self.residency.capacity_bytes,
                "evictions": self.residency.evictions,
                "policy": self.residency.policy.name,
                "pinned_chunks": len(self.residency.pinned),
            }
        return {"tier": self.tier_name, "pinned": self._pin, **sizes, **self.counters.snapshot()}

    def _forget(self, key: tuple[str, str]) -> None:
        """Drop the record of ``key`` if held (caller holds the lock; the residency already let it go)."""
        if self._entries.pop(key, None) is None:
            return
        variants = self._by_chunk[key[0]]
        variants.discard(key[1])
        if not variants:
            del self._by_chunk[key[0]]

    def _place(self, record: ChunkRecord) -> ChunkRecord:
        """``record`` with K/V in host memory, pinned when a CUDA device can use that."""
        tensors = (*record.keys, *record.values)
        if all(t.device.type == "cpu" and (t.is_pinned() or not self._pin) for t in tensors):
            return record

        # one host buffer for all layers, so a request loads it back in one copy
        return dataclasses.replace(record, keys=host_copy(record.keys, pin=self._pin),
                                   values=host_copy(record.values, pin=self._pin))
