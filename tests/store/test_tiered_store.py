"""TieredStore: read promotion into faster tiers, write-through, and whole-store operations."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkcache.kv.record import ISOLATED
from chunkcache.store import DiskTier, MemoryTier, TieredStore
from store_helpers import FP, assert_same_record, build_record


@pytest.fixture
def tiers(tmp_path: Path):
    memory = MemoryTier(capacity_bytes=1 << 20)
    disk = DiskTier(tmp_path / "store", FP)
    yield memory, disk, TieredStore([memory, disk])
    disk.close()


def test_read_promotes_into_faster_tiers(tiers) -> None:
    memory, disk, store = tiers
    record = build_record()
    disk.put(record)  # only on disk
    assert record.chunk_id not in memory
    assert_same_record(store.get(record.chunk_id), record)
    assert record.chunk_id in memory  # promoted
    assert_same_record(store.get(record.chunk_id), record)
    assert disk.stats()["hits"] == 1  # the second read was served by memory
    assert memory.stats()["hits"] == 1 and memory.stats()["misses"] == 1
    assert (store.stats()["hits"], store.stats()["misses"]) == (2, 0)


def test_miss_in_every_tier(tiers) -> None:
    memory, disk, store = tiers
    assert store.get("cd" * 32) is None
    assert store.stats()["misses"] == 1
    assert memory.stats()["misses"] == 1 and disk.stats()["misses"] == 1


def test_put_writes_through(tiers) -> None:
    memory, disk, store = tiers
    record = build_record()
    store.put(record)
    assert memory.get(record.chunk_id) is not None
    assert_same_record(disk.get(record.chunk_id), record)


def test_variants_delete_clear_span_tiers(tiers) -> None:
    memory, disk, store = tiers
    iso, var = build_record(), build_record(prefix_ids=("q" * 64,))
    memory.put(var)
    disk.put(iso)
    store.put(build_record(seed=5))
    assert iso.chunk_id in store
    assert store.variants(iso.chunk_id) == sorted([ISOLATED, var.variant])
    assert store.delete(iso.chunk_id) == 2
    assert iso.chunk_id not in memory and iso.chunk_id not in disk
    store.clear()
    assert memory.stats()["records"] == 0 and disk.stats()["records"] == 0


def test_stats_lists_tiers_fastest_first(tiers) -> None:
    _, _, store = tiers
    assert [t["tier"] for t in store.stats()["tiers"]] == ["memory", "disk"]


def test_needs_a_tier() -> None:
    with pytest.raises(ValueError):
        TieredStore([])


def test_get_many_reads_each_tier_once_for_what_faster_ones_missed(tiers) -> None:
    memory, disk, store = tiers
    in_memory, on_disk, absent = build_record(seed=1), build_record(seed=2), build_record(seed=3)
    store.put(in_memory)
    disk.put(on_disk)
    variant = build_record(seed=2, prefix_ids=("p" * 64,))
    disk.put(variant)
    keys = [(on_disk.chunk_id, ISOLATED), (absent.chunk_id, ISOLATED), (in_memory.chunk_id, ISOLATED),
            (variant.chunk_id, variant.variant)]
    got = store.get_many(keys)
    assert got[1] is None
    for record, want in zip((got[0], got[2], got[3]), (on_disk, in_memory, variant)):
        assert_same_record(record, want)
    assert disk.stats()["hits"] == 2 and disk.stats()["misses"] == 1  # the memory hit never reached the disk
    assert on_disk.chunk_id in memory and memory.variants(variant.chunk_id) == sorted([ISOLATED, variant.variant])
    assert (store.stats()["hits"], store.stats()["misses"]) == (3, 1)
