"""Least recently used: the baseline every engine ships (vLLM's and SGLang's prefix caches, LMCache)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from chunkcache.store.eviction.base import EntryInfo, EvictionPolicy


class LRU(EvictionPolicy):
    """Evict the entry read or written longest ago."""

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def insert(self, key: Hashable, info: EntryInfo) -> None:
        self._order[key] = None

    def access(self, key: Hashable) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def remove(self, key: Hashable) -> None:
        self._order.pop(key, None)

    def victim(self) -> Hashable | None:
        return next(iter(self._order), None)
