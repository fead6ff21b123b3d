"""Value-based eviction: keep what saves the most prefill compute per byte held.

The priority of a cached record is Greedy-Dual-Size-Frequency (Cherkasova, HP Labs 1998), with the cost
term RAGCache uses for KV (Jin et al., arXiv 2404.12457, section 5.2, PGDSF):

    priority(c) = L + f(c) · saved(c) / bytes(c),   saved(c) = tokens(c) · (1 − r(c))

- f(c): how often the chunk was requested — counted across evictions, so a popular chunk that was pushed
  out comes back with its history (RAGCache keeps frequency for evicted nodes too);
- saved(c): the prefill tokens a hit avoids. A hit still recomputes a fraction r(c) of the chunk (the repair
  of Cache-Craft / CacheBlend), so a chunk that typically needs heavy repair saves less. r(c) is the running
  mean of the fractions observed for it (``observe_recompute``), ``DEFAULT_RECOMPUTE`` until one is seen;
- bytes(c): what holding it costs;
- L, the clock: the priority of the last evicted entry. New arrivals start from it, so entries that stopped
  being requested age out instead of staying forever on old counts (GDSF's inflation value).

Where it differs from RAGCache: PGDSF's cost is the measured prefill time of a prefix-tree node; ours is
tokens saved, a proxy proportional to the prefill FLOPs of one chunk, which keeps the policy independent of
hardware and load.
"""

from __future__ import annotations

from collections.abc import Hashable

from chunkcache.store.eviction.base import DEFAULT_RECOMPUTE, EntryInfo, EvictionPolicy
from chunkcache.store.eviction.heap import PriorityIndex


class ValueBased(EvictionPolicy):
    """See module docstring."""

    name = "value"

    def __init__(self, default_recompute: float = DEFAULT_RECOMPUTE) -> None:
        self.clock = 0.0
        self.default_recompute = default_recompute
        self._index = PriorityIndex()
        self._info: dict[Hashable, EntryInfo] = {}
        self._freq: dict[Hashable, int] = {}
        self._recompute: dict[Hashable, tuple[float, int]] = {}

    def value(self, key: Hashable) -> float:
        """f · saved / bytes of ``key`` (without the clock)."""
        info = self._info[key]
        mean, _ = self._recompute.get(key, (self.default_recompute, 0))
        return self._freq.get(key, 0) * info.tokens * (1.0 - mean) / max(info.nbytes, 1)

    def insert(self, key: Hashable, info: EntryInfo) -> None:
        self._info[key] = info
        self._freq[key] = self._freq.get(key, 0) + 1
        self._index.set(key, self.clock + self.value(key))

    def access(self, key: Hashable) -> None:
        if key in self._index:
            self._freq[key] = self._freq.get(key, 0) + 1
            self._index.set(key, self.clock + self.value(key))

    def evicted(self, key: Hashable) -> None:
        if key in self._index:
            self.clock = max(self.clock, self._index.priority(key))

    def remove(self, key: Hashable) -> None:
        self._index.discard(key)
        self._info.pop(key, None)

    def victim(self) -> Hashable | None:
        return self._index.lowest()

    def observe_recompute(self, key: Hashable, fraction: float) -> None:
        mean, n = self._recompute.get(key, (0.0, 0))
        self._recompute[key] = ((mean * n + fraction) / (n + 1), n + 1)
        if key in self._index:
            self._index.set(key, self.clock + self.value(key))
