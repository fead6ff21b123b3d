"""A min-heap of entry priorities with lazy invalidation, shared by the priority-ranked policies."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable


class PriorityIndex:
    """Entries with a priority; ``lowest`` is the one with the smallest (oldest first among equals).
    Updating a priority pushes a new heap item; stale ones are skipped when they surface."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._current: dict[Hashable, tuple[float, int]] = {}
        self._tick = itertools.count()

    def __contains__(self, key: object) -> bool:
        return key in self._current

    def set(self, key: Hashable, priority: float) -> None:
        item = (priority, next(self._tick))
        self._current[key] = item
        heapq.heappush(self._heap, (*item, key))

    def priority(self, key: Hashable) -> float:
        return self._current[key][0]

    def discard(self, key: Hashable) -> None:
        self._current.pop(key, None)

    def lowest(self) -> Hashable | None:
        while self._heap:
            priority, tick, key = self._heap[0]
            if self._current.get(key) == (priority, tick):
                return key
            heapq.heappop(self._heap)
        return None
