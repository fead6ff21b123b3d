"""Chunk KV storage tiers (DESIGN section 4): accelerator and host memory, local disk, Redis, and a store that
stacks them; eviction policies in store/eviction/, capacities in store/settings.py."""

from chunkcache.store.base import CacheCounters, KVTier
from chunkcache.store.counters import SqliteCounters
from chunkcache.store.device import DeviceTier
from chunkcache.store.disk import DiskTier
from chunkcache.store.format import CorruptRecordError
from chunkcache.store.lock import StoreLockedError, store_lock
from chunkcache.store.memory import MemoryTier
from chunkcache.store.remote import RedisTier
from chunkcache.store.settings import TierSettings
from chunkcache.store.tiered import TieredStore

__all__ = [
    "CacheCounters",
    "CorruptRecordError",
    "DeviceTier",
    "DiskTier",
    "KVTier",
    "MemoryTier",
    "RedisTier",
    "SqliteCounters",
    "StoreLockedError",
    "TierSettings",
    "TieredStore",
    "store_lock",
]
