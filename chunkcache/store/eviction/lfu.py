"""Least frequently used (in-cache counts): popular chunks stay even after a burst of one-off reads, which
LRU lets flush them out (LMCache's blend server falling to ~1× within 60–90 queries, its issue #4663)."""

from __future__ import annotations

from collections.abc import Hashable

from chunkcache.store.eviction.base import EntryInfo, EvictionPolicy
from chunkcache.store.eviction.heap import PriorityIndex


class LFU(EvictionPolicy):
    """Evict the entry read fewest times since it entered the tier; among equals, the one touched longest ago."""

    name = "lfu"

    def __init__(self) -> None:
        self._index = PriorityIndex()

    def insert(self, key: Hashable, info: EntryInfo) -> None:
        self._index.set(key, 1.0)

    def access(self, key: Hashable) -> None:
        if key in self._index:
            self._index.set(key, self._index.priority(key) + 1.0)

    def remove(self, key: Hashable) -> None:
        self._index.discard(key)

    def victim(self) -> Hashable | None:
        return self._index.lowest()
