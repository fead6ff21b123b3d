"""Chunk KV storage tiers (DESIGN section 4): host memory, local disk, and a store that stacks them."""

from chunkcache.store.base import CacheCounters, KVTier
from chunkcache.store.counters import SqliteCounters
from chunkcache.store.disk import DiskTier
from chunkcache.store.format import CorruptRecordError
from chunkcache.store.lock import StoreLockedError, store_lock
from chunkcache.store.memory import MemoryTier
from chunkcache.store.tiered import TieredStore

__all__ = [
    "CacheCounters",
    "CorruptRecordError",
    "DiskTier",
    "KVTier",
    "MemoryTier",
    "SqliteCounters",
    "StoreLockedError",
    "TieredStore",
    "store_lock",
]
