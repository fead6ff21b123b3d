"""What an eviction policy is, and the byte budget a tier enforces with one (DESIGN section 4).

A policy only ranks: it is told when an entry arrives, is read, or leaves, and names the next victim.
:class:`Residency` owns the rest — bytes held against capacity, pinned chunks (never victims), the list of
what an insert evicted — so every tier (accelerator, host) and the workload bench's replay share one
implementation of "what stays", and a policy is a few lines that only say what matters most.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass

DEFAULT_RECOMPUTE = 0.15  # recompute fraction assumed for a chunk until one is observed (the default strategy's)


@dataclass(frozen=True)
class EntryInfo:
    """What a policy may weigh about one cached record: its size and the compute it stands for."""

    nbytes: int
    tokens: int


class EvictionPolicy(ABC):
    """Ranks the entries of one tier; :class:`Residency` asks it for victims."""

    name: str = ""

    @abstractmethod
    def insert(self, key: Hashable, info: EntryInfo) -> None:
        """``key`` entered the tier (it is not currently tracked)."""

    @abstractmethod
    def access(self, key: Hashable) -> None:
        """``key`` was read (a hit)."""

    @abstractmethod
    def remove(self, key: Hashable) -> None:
        """``key`` left the tier: evicted, deleted or pinned. Forget it as an eviction candidate."""

    @abstractmethod
    def victim(self) -> Hashable | None:
        """The entry to evict next (still tracked until :meth:`remove`), or None when there is none."""

    def worth_admitting(self, key: Hashable, info: EntryInfo) -> bool:
        """Whether ``key``, arriving at a full tier, should displace the current victim (True by default:
        every new entry gets in)."""
        return True

    def evicted(self, key: Hashable) -> None:
        """``key`` is being evicted (called before :meth:`remove`); aging policies advance their clock here."""

    def observe_recompute(self, key: Hashable, fraction: float) -> None:
        """A request reused ``key`` and recomputed ``fraction`` of its tokens (only value-based uses it)."""


class Residency:
    """Which entries a tier holds, within ``capacity_bytes``, evicting by ``policy``; pinned chunk ids
    (the first element of a key) are held regardless and never chosen as victims.

    Not thread-safe: the tier that owns it holds its lock around every call.
    """

    def __init__(self, capacity_bytes: int, policy: EvictionPolicy) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.policy = policy
        self.nbytes = 0
        self.evictions = 0
        self.pinned: set[str] = set()
        self._sizes: dict[tuple[str, str], EntryInfo] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def admit(self, key: tuple[str, str], info: EntryInfo) -> tuple[bool, list[tuple[str, str]]]:
        """Hold ``key`` (replacing a previous entry of that key); return (whether it is held, the keys evicted
        to make room). When the tier is full, the policy decides whether the newcomer is worth its victim
        (``worth_admitting``); if so it evicts the lowest-ranked entries already held. A record that cannot
        fit — larger than the capacity, or than what pinned entries leave — is not held, and nothing is
        evicted for it."""
        self.drop(key)
        pinned = sum(i.nbytes for k, i in self._sizes.items() if k[0] in self.pinned)
        if info.nbytes > self.capacity_bytes - (0 if key[0] in self.pinned else pinned):
            return False, []
        if (self.nbytes + info.nbytes > self.capacity_bytes and key[0] not in self.pinned
                and not self.policy.worth_admitting(key, info)):
            return False, []
        gone = []
        while self.nbytes + info.nbytes > self.capacity_bytes:  # room first: a new entry is never its own victim
            victim = self.policy.victim()
            if victim is None:
                break
            self.policy.evicted(victim)
            self.drop(victim)
            self.evictions += 1
            gone.append(victim)
        self._sizes[key] = info
        self.nbytes += info.nbytes
        if key[0] not in self.pinned:
            self.policy.insert(key, info)
        return True, gone

    def access(self, key: tuple[str, str]) -> None:
        """A read of ``key`` (held)."""
        if key[0] not in self.pinned:
            self.policy.access(key)

    def drop(self, key: tuple[str, str]) -> bool:
        """Stop holding ``key``; whether it was held."""
        info = self._sizes.pop(key, None)
        if info is None:
            return False
        self.nbytes -= info.nbytes
        self.policy.remove(key)
        return True

    def pin(self, chunk_id: str) -> None:
        """Hold every variant of ``chunk_id`` regardless of the policy (also those stored later)."""
        self.pinned.add(chunk_id)
        for key in [k for k in self._sizes if k[0] == chunk_id]:
            self.policy.remove(key)

    def unpin(self, chunk_id: str) -> None:
        """Make ``chunk_id`` evictable again; its entries rejoin the policy as new arrivals."""
        self.pinned.discard(chunk_id)
        for key, info in [(k, i) for k, i in self._sizes.items() if k[0] == chunk_id]:
            self.policy.insert(key, info)

    def clear(self) -> None:
        for key in list(self._sizes):
            self.drop(key)
