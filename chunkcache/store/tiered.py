"""A stack of tiers, fastest first, behind the one :class:`KVTier` interface.

Reads try each tier in order and promote a hit into every faster tier, so the next read of that
chunk is served from the fastest. Writes either go through to every tier, slowest (most durable)
first, so a failed durable write raises before any faster tier holds a record the store could not
keep; or, with ``flow_down`` (what deployments use: store/settings.py), land in the fastest tier and
reach the slower ones on a background thread (store/flow.py), so a request never waits for a disk or
Redis write. ``flush`` waits for the background writes; ``close`` flushes first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from chunkcache.kv.record import ISOLATED, ChunkRecord
from chunkcache.store.base import CacheCounters, KVTier
from chunkcache.store.flow import FlowDown


class TieredStore(KVTier):
    """``tiers``, fastest first, read with promotion; written through, or to the fastest tier and flowed down
    in the background (``flow_down``)."""

    def __init__(self, tiers: list[KVTier], flow_down: bool = False) -> None:
        if not tiers:
            raise ValueError("a tiered store needs at least one tier")
        self.tiers = list(tiers)
        self.counters = CacheCounters()
        self.flow = FlowDown() if flow_down and len(tiers) > 1 else None

    def get(self, chunk_id: str, variant: str = ISOLATED) -> ChunkRecord | None:
        """The record from the fastest tier holding it, copied into every faster tier; None if none has it."""
        for i, tier in enumerate(self.tiers):
            record = tier.get(chunk_id, variant)
            if record is not None:
                for faster in self.tiers[:i]:
                    faster.put(record)
                self.counters.add(hits=1)
                return record
        self.counters.add(misses=1)
        return None

    def get_many(self, keys: list[tuple[str, str]]) -> list[ChunkRecord | None]:
        """``get`` of every key, each tier asked once for all the keys the faster tiers missed (slow tiers then
        read them concurrently); hits are promoted into the faster tiers."""
        found: list[ChunkRecord | None] = [None] * len(keys)
        for i, tier in enumerate(self.tiers):
            todo = [j for j, rec in enumerate(found) if rec is None]
            if not todo:
                break
            for j, record in zip(todo, tier.get_many([keys[j] for j in todo])):
                if record is not None:
                    found[j] = record
                    for faster in self.tiers[:i]:
                        faster.put(record)
        hits = sum(rec is not None for rec in found)
        self.counters.add(hits=hits, misses=len(keys) - hits)
        return found

    def put(self, record: ChunkRecord) -> None:
        """Write ``record`` to every tier, slowest first; with flow-down, to the fastest tier now and to the
        others in the background (the fastest tier's own copy flows down, so a device record is not held)."""
        if self.flow is None:
            for tier in reversed(self.tiers):
                tier.put(record)
            return
        fastest = self.tiers[0]
        fastest.put(record)
        held = fastest.peek(record.chunk_id, record.variant) if hasattr(fastest, "peek") else None
        self.flow.submit(held if held is not None else record, self.tiers[1:])

    def flush(self) -> None:
        """Wait until background writes to the slower tiers are done (a no-op when writing through)."""
        if self.flow is not None:
            self.flow.flush()

    def variants(self, chunk_id: str) -> list[str]:
        """Variants held by any tier, sorted."""
        return sorted({v for tier in self.tiers for v in tier.variants(chunk_id)})

    def delete(self, chunk_id: str) -> int:
        """Delete ``chunk_id`` from every tier; return how many distinct variants were removed."""
        if self.flow is not None:
            self.flow.forget(chunk_id)
        variants = set(self.variants(chunk_id))
        for tier in self.tiers:
            tier.delete(chunk_id)
        return len(variants)

    def __contains__(self, chunk_id: object) -> bool:
        return any(chunk_id in tier for tier in self.tiers)

    def chunk_tokens(self) -> Iterator[tuple[str, list[int]]]:
        """Every chunk held by any tier, once."""
        seen: set[str] = set()
        for tier in self.tiers:
            for chunk_id, tokens in tier.chunk_tokens():
                if chunk_id not in seen:
                    seen.add(chunk_id)
                    yield chunk_id, tokens

    def pin(self, chunk_id: str) -> None:
        for tier in self.tiers:
            tier.pin(chunk_id)

    def unpin(self, chunk_id: str) -> None:
        for tier in self.tiers:
            tier.unpin(chunk_id)

    def observe_recompute(self, chunk_id: str, variant: str, fraction: float) -> None:
        for tier in self.tiers:
            tier.observe_recompute(chunk_id, variant, fraction)

    def clear(self) -> None:
        """Clear every tier (writes still queued for the slower ones are dropped)."""
        if self.flow is not None:
            self.flow.forget_all()
        for tier in self.tiers:
            tier.clear()

    def stats(self) -> dict[str, Any]:
        """Whole-store lookup counters (a hit in any tier is a hit) and each tier's own stats, fastest first."""
        flow = {} if self.flow is None else {
            "flow_down": {"pending": self.flow.pending, "written": self.flow.written, "errors": self.flow.errors}}
        return {"tier": "tiered", **self.counters.snapshot(), **flow, "tiers": [tier.stats() for tier in self.tiers]}

    def close(self) -> None:
        """Finish the background writes, then close every tier."""
        if self.flow is not None:
            self.flow.close()
            self.flow = None
        for tier in self.tiers:
            tier.close()
