"""Value-based eviction: keep what saves the most prefill compute per byte held.

The value of a cached record is its recent request frequency times the compute a hit saves, per byte:

    value(c) = F(c) · saved(c) / bytes(c),   saved(c) = tokens(c) · (1 − r(c)),
    F(c) = Σ_i 2^(−(t − t_i) / H)   over the times t_i chunk c was requested (t counts lookups)

- saved / bytes is the cost-per-size term of Greedy-Dual-Size-Frequency (Cherkasova, HP Labs 1998) that
  RAGCache adapts to KV (Jin et al., arXiv 2404.12457, section 5.2, PGDSF: Frequency × Cost / Size). A hit
  still recomputes a fraction r(c) of the chunk (the repair of Cache-Craft / CacheBlend), so a chunk that
  typically needs heavy repair saves less; r(c) is the running mean observed for it (``observe_recompute``),
  ``DEFAULT_RECOMPUTE`` until one is seen.
- F is LRFU's combined recency-frequency (Lee et al., IEEE ToC 2001, F(x) = (1/2)^(λx) with λ = 1/H): every
  request counts, counted across evictions (RAGCache keeps frequencies of evicted nodes too), and halves in
  weight every H lookups. With a large H it approaches perfect LFU, best for a stable Zipf popularity; the
  decay lets a chunk that stopped being asked for age out, which plain counts never do.

Where it differs from PGDSF: the cost is tokens saved (proportional to the prefill FLOPs of the chunk), not
measured time, so the policy does not depend on hardware or load; and aging is LRFU's decay instead of the
GDSF clock, which on the workload bench's stationary Zipf trace evicted popular chunks too early (2–6% more
tokens recomputed at 2.5–40% capacity: docs/benchmarks.md). Scores are kept as logarithms, so they never
overflow however long the tier runs.

Admission: a newcomer to a full tier displaces the lowest-valued entry only if it is worth as much
(``worth_admitting``), so one-off chunks do not flush popular ones out.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

from chunkcache.store.eviction.base import DEFAULT_RECOMPUTE, EntryInfo, EvictionPolicy
from chunkcache.store.eviction.heap import PriorityIndex

DEFAULT_HALF_LIFE = 10_000  # lookups after which a request counts half


class ValueBased(EvictionPolicy):
    """See module docstring."""

    name = "value"

    def __init__(self, half_life: float = DEFAULT_HALF_LIFE, default_recompute: float = DEFAULT_RECOMPUTE) -> None:
        if half_life <= 0:
            raise ValueError("half_life must be > 0")
        self.half_life = half_life
        self.default_recompute = default_recompute
        self.lookups = 0
        self._index = PriorityIndex()
        self._info: dict[Hashable, EntryInfo] = {}
        self._log_freq: dict[Hashable, float] = {}  # log of F · 2^(t / H), time-invariant between requests
        self._recompute: dict[Hashable, tuple[float, int]] = {}
        self._counted: Hashable | None = None  # a request already counted by worth_admitting

    def frequency(self, key: Hashable) -> float:
        """F(key) now (module docstring)."""
        if key not in self._log_freq:
            return 0.0
        return math.exp(self._log_freq[key] - self.lookups * math.log(2) / self.half_life)

    def value(self, key: Hashable) -> float:
        """F · saved / bytes of ``key`` now."""
        return self.frequency(key) * self._saved_per_byte(key)

    def _saved_per_byte(self, key: Hashable) -> float:
        info = self._info[key]
        mean, _ = self._recompute.get(key, (self.default_recompute, 0))
        return info.tokens * max(1.0 - mean, 1e-6) / max(info.nbytes, 1)

    def _requested(self, key: Hashable) -> None:
        self._log_request(key)
        self._rank(key)

    def _log_request(self, key: Hashable) -> None:
        now = self.lookups * math.log(2) / self.half_life
        old = self._log_freq.get(key)
        self._log_freq[key] = now if old is None else max(old, now) + math.log1p(math.exp(-abs(old - now)))
        self.lookups += 1

    def _rank(self, key: Hashable) -> None:
        # comparing log F·2^(t/H) + log(saved/bytes) orders entries as their values now do
        self._index.set(key, self._log_freq[key] + math.log(self._saved_per_byte(key)))

    def worth_admitting(self, key: Hashable, info: EntryInfo) -> bool:
        """Admission (TinyLFU's idea, Einziger et al., ACM ToS 2017): a newcomer displaces the lowest-valued
        entry only if its own value, from its request history, is at least as high. One-off chunks then
        stop flushing popular ones out; a chunk asked for again and again builds up frequency and gets in.
        The request is counted either way."""
        self._info[key] = info
        self._log_request(key)
        self._counted = key
        victim = self._index.lowest()
        if victim is None:
            return True
        admit = self._log_freq[key] + math.log(self._saved_per_byte(key)) >= self._index.priority(victim)
        if not admit:
            self._info.pop(key, None)
            self._counted = None
        return admit

    def insert(self, key: Hashable, info: EntryInfo) -> None:
        self._info[key] = info
        if self._counted == key:
            self._counted = None
            self._rank(key)
        else:
            self._requested(key)

    def access(self, key: Hashable) -> None:
        if key in self._index:
            self._requested(key)

    def remove(self, key: Hashable) -> None:
        self._index.discard(key)
        self._info.pop(key, None)

    def victim(self) -> Hashable | None:
        return self._index.lowest()

    def observe_recompute(self, key: Hashable, fraction: float) -> None:
        mean, n = self._recompute.get(key, (0.0, 0))
        self._recompute[key] = ((mean * n + fraction) / (n + 1), n + 1)
        if key in self._index:
            self._rank(key)
