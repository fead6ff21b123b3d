"""Tier capacities and policy from one settings object: flags over environment over file over defaults.

The settings file is TOML, ``<store>/chunkcache.toml`` (or ``$CHUNKCACHE_CONFIG``), section ``[tiers]``::

    [tiers]
    device_bytes = "8GiB"     # accelerator tier; 0 turns it off (it needs --device cuda)
    host_bytes = "32GiB"      # host-memory tier (pinned on CUDA hosts)
    redis_url = "redis://cache.internal:6379/0"   # shared remote tier; absent: none
    eviction = "value"        # lru | lfu | value, for the memory tiers

Environment: ``CHUNKCACHE_DEVICE_BYTES``, ``CHUNKCACHE_HOST_BYTES``, ``CHUNKCACHE_REDIS_URL``,
``CHUNKCACHE_EVICTION``. Sizes are integers of bytes or strings with a unit (``512MB``, ``4GiB``). The disk
tier is the store directory itself and is always on: it is the durable copy.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from chunkcache.store.base import KVTier
from chunkcache.store.device import DeviceTier
from chunkcache.store.disk import DiskTier
from chunkcache.store.eviction import DEFAULT_POLICY, POLICIES
from chunkcache.store.memory import MemoryTier
from chunkcache.store.remote import RedisTier
from chunkcache.store.tiered import TieredStore

CONFIG_ENV = "CHUNKCACHE_CONFIG"
CONFIG_FILE = "chunkcache.toml"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: int | str) -> int:
    """Bytes from an int or a string such as ``512MB``, ``4GiB``, ``1e9``; ValueError when unreadable or < 0."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
        if m is None or m.group(2).lower() not in _UNITS:
            raise ValueError(f"not a size: {value!r} (use bytes or a unit: KB, MB, GB, KiB, MiB, GiB)")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n < 0:
        raise ValueError(f"a size must be >= 0, got {value!r}")
    return n


@dataclass(frozen=True)
class TierSettings:
    """Capacities of the memory tiers, the Redis URL and the eviction policy (module docstring)."""

    device_bytes: int = 0
    host_bytes: int = 1 << 30
    redis_url: str | None = None
    eviction: str = DEFAULT_POLICY

    def __post_init__(self) -> None:
        if self.eviction not in POLICIES:
            raise ValueError(f"unknown eviction policy {self.eviction!r}; choose one of {', '.join(POLICIES)}")
        for name in ("device_bytes", "host_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    @classmethod
    def load(cls, store_root: Path | None = None, **flags: Any) -> "TierSettings":
        """Defaults, then the settings file, then the environment, then ``flags`` that are not None."""
        settings = cls()
        path = Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else (
            store_root / CONFIG_FILE if store_root is not None else None)
        if path is not None and path.exists():
            try:
                table = tomllib.loads(path.read_text()).get("tiers", {})
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path}: not valid TOML ({e})") from None
            settings = settings._with(table, f"{path} [tiers]")
        env = {f.name: os.environ[f"CHUNKCACHE_{f.name.upper()}"] for f in fields(cls)
               if os.environ.get(f"CHUNKCACHE_{f.name.upper()}")}
        settings = settings._with(env, "the environment")
        return settings._with({k: v for k, v in flags.items() if v is not None}, "the command line")

    def _with(self, values: dict[str, Any], source: str) -> "TierSettings":
        known = {f.name for f in fields(self)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"{source}: unknown tier setting(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(known))}")
        try:
            parsed = {k: parse_bytes(v) if k.endswith("_bytes") else v for k, v in values.items()}
            return replace(self, **parsed)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    def build(self, disk: DiskTier, device: torch.device | str = "cpu") -> TieredStore:
        """The tier stack, fastest first: accelerator (when ``device_bytes`` and a CUDA ``device``), host
        memory, ``disk``, then Redis (when ``redis_url``); writes land in the fastest and flow down in the
        background (store/flow.py)."""
        tiers: list[KVTier] = []
        if self.device_bytes and torch.device(device).type == "cuda":
            tiers.append(DeviceTier(self.device_bytes, device, self.eviction))
        tiers.append(MemoryTier(self.host_bytes, self.eviction))
        tiers.append(disk)
        if self.redis_url:
            tiers.append(RedisTier(self.redis_url, disk.fingerprint))
        return TieredStore(tiers, flow_down=True)
