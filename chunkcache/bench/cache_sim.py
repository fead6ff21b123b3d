"""Replay a chunk trace against cache tiers, and against exact prefix caching, counting what is recomputed.

Which records a tier holds depends only on the order of reads and writes, their sizes and the policy, not on
the tensors; so the policy sweep of ``chunkcache bench workload`` replays the trace through the same
:class:`~chunkcache.store.eviction.Residency` objects the memory tiers use to decide what stays, with record
sizes of a real model shape, and counts:

- per query, per chunk: a hit in tier i (the record is read from there and promoted into every faster tier,
  as ``TieredStore.get`` does) recomputes ``recompute`` of the chunk's tokens (the repair); a miss computes
  all of them and writes the record through every tier (``TieredStore.put``);
- bytes moved: a hit in tier i moves the record out of tier i; a write moves it into every tier;
- exact prefix caching (vLLM automatic prefix caching, SGLang's radix cache): a query reuses the longest
  block-aligned token prefix that any earlier query had, with an unbounded cache — an upper bound on what it
  can save, so the comparison favours the baseline.

Both count the template prefix as cached and the question as computed, so their recomputed tokens compare.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field

from chunkcache.store.eviction import EntryInfo, EvictionPolicy, Residency, make_policy
from chunkcache.store.eviction.heap import PriorityIndex

ORACLE = "optimal"
POPULARITY_ORACLE = "popularity"
REFERENCES = (ORACLE, POPULARITY_ORACLE)  # not policies a server can run: each reads the whole trace first


class Belady(EvictionPolicy):
    """Offline optimum for reference, not a policy a server can run: evict the entry whose next request lies
    furthest in the future (Belady 1966; optimal for equal sizes, a close bound otherwise). It reads the
    whole trace up front; every lookup is one ``insert`` (miss) or ``access`` (hit), in trace order."""

    name = ORACLE

    def __init__(self, lookups: list[Hashable]) -> None:
        self._next: list[float] = [float("inf")] * len(lookups)
        last: dict[Hashable, int] = {}
        for t in range(len(lookups) - 1, -1, -1):
            self._next[t] = last.get(lookups[t], float("inf"))
            last[lookups[t]] = t
        self._t = 0
        self._index = PriorityIndex()

    def _seen(self, key: Hashable) -> None:
        self._index.set(key, -self._next[self._t])
        self._t += 1

    def insert(self, key: Hashable, info: EntryInfo) -> None:
        self._seen(key)

    def access(self, key: Hashable) -> None:
        self._seen(key)

    def remove(self, key: Hashable) -> None:
        self._index.discard(key)

    def victim(self) -> Hashable | None:
        return self._index.lowest()


class PopularityOracle(EvictionPolicy):
    """The ceiling of online policies, for reference: it knows how often each chunk is requested over the
    whole trace and keeps the most requested ones (ties: the one held longer goes), admitting a newcomer only
    if it is requested at least as often as the victim. On a trace whose requests are independent draws from
    a fixed popularity (the independent reference model), keeping the most popular entries is the optimal
    online policy (algorithm A0 of Aho, Denning and Ullman, "Principles of Optimal Page Replacement", JACM
    1971); an online frequency policy such as value-based can at best learn these counts as the trace goes.
    The gap from here to ``optimal`` (Belady) is what only knowledge of the future buys."""

    name = POPULARITY_ORACLE

    def __init__(self, lookups: list[Hashable]) -> None:
        self._count = Counter(lookups)
        self._index = PriorityIndex()

    def insert(self, key: Hashable, info: EntryInfo) -> None:
        self._index.set(key, self._count[key])

    def access(self, key: Hashable) -> None:
        """Rank by the trace's count only: a hit changes nothing."""

    def remove(self, key: Hashable) -> None:
        self._index.discard(key)

    def victim(self) -> Hashable | None:
        return self._index.lowest()

    def worth_admitting(self, key: Hashable, info: EntryInfo) -> bool:
        victim = self._index.lowest()
        return victim is None or self._count[key] >= self._count[victim]


@dataclass
class TierCount:
    """What one tier saw over a replay."""

    name: str
    hits: int = 0
    bytes_read: int = 0
    bytes_written: int = 0


@dataclass
class Replay:
    """Totals of one replay, and the per-query recomputed tokens (for windows over the trace)."""

    policy: str
    capacities: list[int]
    tiers: list[TierCount]
    lookups: int = 0
    misses: int = 0
    recomputed: list[int] = field(default_factory=list)
    hit_per_query: list[float] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        return 1 - self.misses / self.lookups if self.lookups else 0.0

    def to_dict(self) -> dict:
        return {"policy": self.policy, "capacities_bytes": self.capacities, "hit_rate": round(self.hit_rate, 4),
                "recomputed_tokens": sum(self.recomputed), "lookups": self.lookups, "misses": self.misses,
                "tiers": [vars(t) for t in self.tiers]}


def replay_tiers(queries: list[list[int]], chunk_tokens: list[int], question_tokens: list[int],
                 capacities: list[int], policy: str, bytes_per_token: int, recompute: float,
                 names: list[str] | None = None) -> Replay:
    """Replay ``queries`` (chunk indices) through tiers of ``capacities`` bytes, fastest first, each evicting by
    ``policy``; ``chunk_tokens[c]`` is chunk c's length, ``question_tokens[q]`` query q's question length."""
    names = names or [f"tier{i}" for i in range(len(capacities))]
    if policy in REFERENCES:
        if len(capacities) != 1:
            raise ValueError(f"the reference policy {policy!r} is computed for one tier only")
        reference = Belady if policy == ORACLE else PopularityOracle
        tiers = [Residency(capacities[0], reference([(str(c), "isolated") for q in queries for c in q]))]
    else:
        tiers = [Residency(cap, make_policy(policy)) for cap in capacities]
    out = Replay(policy, list(capacities), [TierCount(n) for n in names])
    for q, chunks in enumerate(queries):
        computed = question_tokens[q]
        hits = 0
        for c in chunks:
            key = (str(c), "isolated")
            info = EntryInfo(chunk_tokens[c] * bytes_per_token, chunk_tokens[c])
            out.lookups += 1
            level = next((i for i, tier in enumerate(tiers) if key in tier), None)
            if level is None:
                out.misses += 1
                computed += chunk_tokens[c]
                for tier, count in zip(tiers, out.tiers):
                    tier.admit(key, info)
                    count.bytes_written += info.nbytes
                continue
            hits += 1
            computed += round(recompute * chunk_tokens[c])
            tiers[level].access(key)
            out.tiers[level].hits += 1
            out.tiers[level].bytes_read += info.nbytes
            for tier, count in zip(tiers[:level], out.tiers[:level]):
                tier.admit(key, info)
                count.bytes_written += info.nbytes
        out.recomputed.append(computed)
        out.hit_per_query.append(hits / len(chunks))
    return out


def prefix_cache_recomputed(prompts: list[list[int]], block: int = 16) -> list[int]:
    """Tokens each prompt computes under exact prefix caching with an unbounded cache of ``block``-token blocks:
    everything after the longest block-aligned prefix some earlier prompt had."""
    seen: set[bytes] = set()
    out = []
    for ids in prompts:
        h = hashlib.sha256()
        reused = 0
        full_blocks = len(ids) // block
        hashes = []
        for b in range(full_blocks):
            h.update(repr(ids[b * block:(b + 1) * block]).encode())
            digest = h.copy().digest()
            hashes.append(digest)
            if reused == b * block and digest in seen:
                reused = (b + 1) * block
        seen.update(hashes)
        out.append(len(ids) - reused)
    return out
