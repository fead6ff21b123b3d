"""MemoryTier: LRU eviction by bytes, byte accounting, variants, pinning on CUDA hosts."""

from __future__ import annotations

import pytest
import torch

from chunkcache.kv.record import ISOLATED
from chunkcache.store import MemoryTier
from chunkcache.store.memory import record_bytes
from store_helpers import build_record

# 3 layers x (K + V) x [2 heads, 5 tokens, 4 dims] x 2 bytes (bf16), no statistics.
RECORD_BYTES = 3 * 2 * 2 * 5 * 4 * 2


def test_record_bytes_counts_kv_and_stats() -> None:
    assert record_bytes(build_record(stats=False)) == RECORD_BYTES
    # inter [3, 1] + intra [3] + outside [5], float32
    assert record_bytes(build_record(stats=True)) == RECORD_BYTES + (3 + 3 + 5) * 4


def test_lru_eviction_by_bytes() -> None:
    tier = MemoryTier(capacity_bytes=2 * RECORD_BYTES + RECORD_BYTES // 2)  # room for two records
    a, b, c = (build_record(seed=s, stats=False) for s in range(3))
    tier.put(a)
    tier.put(b)
    assert tier.get(a.chunk_id) is a  # a is now the most recently used
    tier.put(c)  # over capacity: b, the least recently used, goes
    assert b.chunk_id not in tier
    assert tier.get(a.chunk_id) is a and tier.get(c.chunk_id) is c
    stats = tier.stats()
    assert (stats["records"], stats["bytes"], stats["evictions"]) == (2, 2 * RECORD_BYTES, 1)
    assert (stats["hits"], stats["misses"]) == (3, 0)
    assert tier.get(b.chunk_id) is None and tier.stats()["misses"] == 1


def test_replacing_a_record_does_not_double_count() -> None:
    tier = MemoryTier(capacity_bytes=10 * RECORD_BYTES)
    record = build_record(stats=False)
    tier.put(record)
    tier.put(record)
    assert tier.stats()["bytes"] == RECORD_BYTES and tier.stats()["records"] == 1


def test_oversized_record_is_not_kept_and_drops_stale_copy() -> None:
    small = build_record(stats=False)
    tier = MemoryTier(capacity_bytes=RECORD_BYTES)
    tier.put(small)
    bigger = build_record(stats=True)  # same chunk and variant, a few bytes over capacity
    assert (bigger.chunk_id, bigger.variant) == (small.chunk_id, small.variant)
    tier.put(bigger)
    assert tier.get(small.chunk_id) is None
    assert tier.stats()["bytes"] == 0


def test_variants_delete_clear() -> None:
    tier = MemoryTier(capacity_bytes=10 * RECORD_BYTES)
    iso, var, other = build_record(), build_record(prefix_ids=("p" * 64,)), build_record(seed=9)
    for record in (iso, var, other):
        tier.put(record)
    assert tier.variants(iso.chunk_id) == sorted([ISOLATED, var.variant])
    assert tier.get(iso.chunk_id, var.variant) is var
    assert tier.delete(iso.chunk_id) == 2
    assert iso.chunk_id not in tier and tier.variants(iso.chunk_id) == []
    assert tier.stats()["chunks"] == 1
    tier.clear()
    assert other.chunk_id not in tier and tier.stats()["bytes"] == 0


def test_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError):
        MemoryTier(capacity_bytes=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning only happens on CUDA hosts")
def test_records_are_pinned_on_cuda_hosts() -> None:
    tier = MemoryTier(capacity_bytes=10 * RECORD_BYTES)
    record = build_record()
    tier.put(record.to("cuda", torch.bfloat16))
    held = tier.get(record.chunk_id)
    assert all(t.device.type == "cpu" and t.is_pinned() for t in (*held.keys, *held.values))
    assert torch.equal(held.keys[0], record.keys[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_records_are_kept_as_is_without_cuda() -> None:
    tier = MemoryTier(capacity_bytes=10 * RECORD_BYTES)
    record = build_record()
    tier.put(record)
    assert tier.get(record.chunk_id) is record and tier.stats()["pinned"] is False
