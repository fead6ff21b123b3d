"""TierSettings: sizes, precedence flags > env > file > defaults, clear errors, and the stack it builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkcache.store import DiskTier, MemoryTier, RedisTier, TierSettings
from chunkcache.store.settings import parse_bytes
from store_helpers import FP


def test_sizes() -> None:
    assert parse_bytes(123) == 123
    assert parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes("4GiB") == 4 * 2**30
    assert parse_bytes("1.5 KiB") == 1536
    for bad in ("lots", "5 parsecs", -1, True):
        with pytest.raises(ValueError):
            parse_bytes(bad)


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "chunkcache.toml").write_text('[tiers]\nhost_bytes = "2GiB"\neviction = "lfu"\n'
                                              'redis_url = "redis://file:1/0"\n')
    monkeypatch.delenv("CHUNKCACHE_CONFIG", raising=False)
    assert TierSettings.load(tmp_path) == TierSettings(host_bytes=2 << 30, eviction="lfu", redis_url="redis://file:1/0")
    monkeypatch.setenv("CHUNKCACHE_EVICTION", "lru")
    monkeypatch.setenv("CHUNKCACHE_HOST_BYTES", "3GiB")
    s = TierSettings.load(tmp_path, host_bytes="1MiB", eviction=None)
    assert (s.host_bytes, s.eviction, s.redis_url) == (1 << 20, "lru", "redis://file:1/0")


def test_errors_name_their_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHUNKCACHE_CONFIG", raising=False)
    (tmp_path / "chunkcache.toml").write_text("[tiers]\nhost_byte = 5\n")
    with pytest.raises(ValueError, match=r"chunkcache.toml \[tiers\]: unknown tier setting\(s\) host_byte"):
        TierSettings.load(tmp_path)
    (tmp_path / "chunkcache.toml").write_text("[tiers\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        TierSettings.load(tmp_path)
    (tmp_path / "chunkcache.toml").unlink()
    monkeypatch.setenv("CHUNKCACHE_HOST_BYTES", "zz")
    with pytest.raises(ValueError, match="the environment: not a size"):
        TierSettings.load(tmp_path)
    with pytest.raises(ValueError, match="unknown eviction policy"):
        TierSettings(eviction="fifo")


def test_build_stacks_fastest_first(tmp_path: Path, redis_server) -> None:
    disk = DiskTier(tmp_path / "kv", FP)
    store = TierSettings(host_bytes=1 << 20, redis_url=redis_server.url, eviction="lfu", device_bytes=1 << 20
                         ).build(disk, "cpu")  # no accelerator tier on a CPU device
    assert [type(t) for t in store.tiers] == [MemoryTier, DiskTier, RedisTier]
    assert store.tiers[0].stats()["policy"] == "lfu" and store.tiers[0].capacity_bytes == 1 << 20
    store.close()
