"""Accelerator tier: the hottest chunk records kept in GPU memory, so a hit places them with no host copy.

DESIGN section 4's top tier. It is the memory tier with records moved to ``device`` on write; the same
byte budget and eviction policy decide what stays. A record that falls out of it is still in the tiers
below (writes go through), so eviction here only costs a host-to-device copy on the next hit.
"""

from __future__ import annotations

import torch

from chunkcache.kv.record import ChunkRecord
from chunkcache.store.eviction import EvictionPolicy
from chunkcache.store.memory import MemoryTier


class DeviceTier(MemoryTier):
    """Records on ``device`` (``cuda``, ``cuda:1``; ``cpu`` works too, for tests), at most ``capacity_bytes``."""

    tier_name = "device"

    def __init__(self, capacity_bytes: int, device: str | torch.device, policy: str | EvictionPolicy = "lru") -> None:
        super().__init__(capacity_bytes, policy)
        self.device = torch.device(device)
        self._pin = False

    def _place(self, record: ChunkRecord) -> ChunkRecord:
        return record.to(self.device, record.keys[0].dtype)
