"""Pluggable eviction policies for the memory tiers (issue 8): LRU, LFU and value-based (GDSF)."""

from chunkcache.store.eviction.base import DEFAULT_RECOMPUTE, EntryInfo, EvictionPolicy, Residency
from chunkcache.store.eviction.lfu import LFU
from chunkcache.store.eviction.lru import LRU
from chunkcache.store.eviction.value import ValueBased

POLICIES: dict[str, type[EvictionPolicy]] = {"lru": LRU, "lfu": LFU, "value": ValueBased}
DEFAULT_POLICY = "value"


def make_policy(name: str) -> EvictionPolicy:
    """A fresh policy by name (``lru``, ``lfu``, ``value``)."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; choose one of {', '.join(POLICIES)}") from None


__all__ = ["DEFAULT_POLICY", "DEFAULT_RECOMPUTE", "LFU", "LRU", "POLICIES", "EntryInfo", "EvictionPolicy",
           "Residency", "ValueBased", "make_policy"]
