"""RedisTier against a real redis-server: round trip, verification, outages, and cluster key layout."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from redis.crc import key_slot

from chunkcache.kv.record import ISOLATED
from chunkcache.store.remote import RedisTier
from store_helpers import FP, assert_same_record, build_record


@pytest.fixture
def tier(redis_server):
    t = RedisTier(redis_server.url, FP, timeout_s=0.5, retry_s=0.3)
    yield t
    t.close()


def test_round_trip_variants_tokens_delete(tier: RedisTier) -> None:
    iso, var, other = build_record(), build_record(prefix_ids=("p" * 64,)), build_record(seed=7)
    for record in (iso, var, other):
        tier.put(record)
    got = tier.get(iso.chunk_id)
    assert_same_record(got, iso)
    assert_same_record(tier.get(var.chunk_id, var.variant), var)
    assert tier.variants(iso.chunk_id) == sorted([ISOLATED, var.variant])
    assert iso.chunk_id in tier and "f" * 64 not in tier
    assert dict(tier.chunk_tokens()) == {iso.chunk_id: iso.token_ids, other.chunk_id: other.token_ids}
    assert tier.delete(iso.chunk_id) == 2
    assert tier.get(iso.chunk_id) is None and iso.chunk_id not in tier and tier.variants(iso.chunk_id) == []
    stats = tier.stats()
    assert (stats["hits"], stats["misses"], stats["corrupt"], stats["available"]) == (2, 1, 0, True)


def test_clear_leaves_other_models_alone(redis_server, tier: RedisTier) -> None:
    neighbour = RedisTier(redis_server.url, "another-model-fingerprint")
    theirs = build_record(seed=3, fingerprint="another-model-fingerprint")
    neighbour.put(theirs)
    tier.put(build_record())
    tier.clear()
    assert list(tier.chunk_tokens()) == []
    assert_same_record(neighbour.get(theirs.chunk_id), theirs)


def test_a_corrupted_value_is_dropped_and_counted(redis_server, tier: RedisTier) -> None:
    record = build_record()
    tier.put(record)
    key = tier.key(record.chunk_id, ISOLATED)
    client = redis_server.client()
    size = client.strlen(key)
    byte = client.getrange(key, size - 10, size - 10)
    client.setrange(key, size - 10, bytes([byte[0] ^ 0xFF]))  # flip one byte of tensor data
    assert tier.get(record.chunk_id) is None
    assert not client.exists(key)
    assert tier.stats()["corrupt"] == 1


def test_a_record_from_another_model_is_refused(redis_server, tier: RedisTier) -> None:
    """Another model's value under this model's key (a collision, a bad copy) is never handed out."""
    stranger = RedisTier(redis_server.url, "another-model-fingerprint")
    theirs = build_record(fingerprint="another-model-fingerprint")
    stranger.put(theirs)
    client = redis_server.client()
    mine = build_record()  # same tokens (seed 0), so theirs would be a plausible look-alike
    client.set(tier.key(mine.chunk_id, ISOLATED), client.get(stranger.key(theirs.chunk_id, ISOLATED)))
    assert tier.get(mine.chunk_id) is None and tier.stats()["corrupt"] == 1
    with pytest.raises(ValueError, match="put into the store of"):
        tier.put(theirs)


def test_redis_down_then_back(redis_server, tier: RedisTier) -> None:
    record = build_record()
    tier.put(record)
    redis_server.stop()
    started = time.monotonic()
    assert tier.get(record.chunk_id) is None  # a miss, not an error
    tier.put(build_record(seed=2))  # skipped, not raised
    assert tier.variants(record.chunk_id) == [] and record.chunk_id not in tier
    assert time.monotonic() - started < 2.0  # marked down after the first failure: no waits per call
    assert tier.stats()["available"] is False and tier.stats()["unavailable"] >= 3
    redis_server.start()  # back, empty
    time.sleep(0.35)  # past retry_s
    tier.put(record)
    assert_same_record(tier.get(record.chunk_id), record)
    assert tier.stats()["available"] is True


def test_a_slow_redis_counts_as_down(redis_server, tier: RedisTier) -> None:
    record = build_record()
    tier.put(record)
    blocker = threading.Thread(target=lambda: redis_server.client().execute_command("DEBUG", "SLEEP", "1.5"))
    blocker.start()
    time.sleep(0.1)
    started = time.monotonic()
    assert tier.get(record.chunk_id) is None
    assert time.monotonic() - started < 1.2  # gave up after timeout_s, did not wait out the sleep
    assert tier.stats()["available"] is False
    blocker.join()
    time.sleep(0.35)
    assert_same_record(tier.get(record.chunk_id), record)


def test_a_chunk_lives_in_one_cluster_slot_and_chunks_spread(tier: RedisTier) -> None:
    """Redis Cluster: a chunk's value, variant set and tokens hash to one slot (so the put transaction is
    valid on a cluster), and different chunks spread over the 16384 slots."""
    records = [build_record(seed=s) for s in range(200)]
    for record in records[:5]:
        slots = {key_slot(tier.key(record.chunk_id, what).encode()) for what in (ISOLATED, "abc123", "variants", "tokens")}
        assert len(slots) == 1
    slots = {key_slot(tier.key(r.chunk_id, "tokens").encode()) for r in records}
    assert len(slots) > 190


def test_bf16_and_fp32_records_round_trip_bit_exact(tier: RedisTier) -> None:
    for dtype in (torch.bfloat16, torch.float32):
        record = build_record(seed=11, dtype=dtype)
        tier.put(record)
        got = tier.get(record.chunk_id)
        assert got.keys[0].dtype == dtype
        assert_same_record(got, record)


def test_get_many_fetches_concurrently_in_order(tier: RedisTier) -> None:
    records = [build_record(seed=s, tokens=64) for s in range(12)]
    for record in records[::2]:
        tier.put(record)
    got = tier.get_many([(r.chunk_id, ISOLATED) for r in records])
    for i, (record, want) in enumerate(zip(got, records)):
        if i % 2:
            assert record is None
        else:
            assert_same_record(record, want)
    assert (tier.stats()["hits"], tier.stats()["misses"]) == (6, 6)
