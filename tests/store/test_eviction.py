"""Eviction policies and the byte budget: which record each policy gives up, pinning, the value clock."""

from __future__ import annotations

import pytest

from chunkcache.store import MemoryTier
from chunkcache.store.eviction import LFU, LRU, EntryInfo, Residency, ValueBased, make_policy
from store_helpers import build_record

KB = EntryInfo(nbytes=1000, tokens=100)


def _residency(policy, capacity=3000) -> Residency:
    return Residency(capacity, policy)


def test_lru_evicts_least_recent_read() -> None:
    r = _residency(LRU())
    for name in "abc":
        r.admit((name, "iso"), KB)
    r.access(("a", "iso"))
    held, gone = r.admit(("d", "iso"), KB)
    assert held and gone == [("b", "iso")]


def test_lfu_keeps_the_frequently_read_even_if_not_recent() -> None:
    r = _residency(LFU())
    for name in "abc":
        r.admit((name, "iso"), KB)
    for _ in range(3):
        r.access(("a", "iso"))
    r.access(("b", "iso"))
    r.access(("c", "iso"))
    r.access(("b", "iso"))
    held, gone = r.admit(("d", "iso"), KB)  # a: 4 reads, b: 3, c: 2 -> c goes though a was read first
    assert gone == [("c", "iso")]


def test_value_weighs_compute_saved_per_byte() -> None:
    r = _residency(ValueBased(), capacity=3000)
    r.admit(("dense", "iso"), EntryInfo(nbytes=1000, tokens=100))
    r.admit(("sparse", "iso"), EntryInfo(nbytes=1000, tokens=10))  # same bytes, a tenth of the tokens saved
    r.admit(("third", "iso"), EntryInfo(nbytes=1000, tokens=100))
    held, gone = r.admit(("new", "iso"), EntryInfo(nbytes=1000, tokens=100))
    assert gone == [("sparse", "iso")]


def test_value_counts_repair_a_hit_still_needs() -> None:
    policy = ValueBased()
    r = _residency(policy, capacity=2000)
    r.admit(("light", "iso"), KB)
    r.admit(("heavy", "iso"), KB)
    policy.observe_recompute(("heavy", "iso"), 0.9)  # a hit on it still recomputes 90%
    policy.observe_recompute(("light", "iso"), 0.05)
    _, gone = r.admit(("new", "iso"), KB)
    assert gone[0] == ("heavy", "iso")


def test_value_decay_ages_out_stale_popular_entries() -> None:
    """LRFU decay: once a popular entry stops being read, fresh entries read twice overtake it."""
    policy = ValueBased(half_life=2)
    r = _residency(policy, capacity=2000)
    r.admit(("old", "iso"), KB)
    for _ in range(3):
        r.access(("old", "iso"))  # 4 requests
    survived = 0
    for i in range(12):  # a stream of new chunks, each read twice
        key = (f"n{i}", "iso")
        r.admit(key, KB)
        r.access(key)
        survived += ("old", "iso") in r
    assert ("old", "iso") not in r and survived >= 1  # it lasted a while, then aged out
    stable = ValueBased(half_life=1e12)  # no decay: perfect LFU keeps it
    r = _residency(stable, capacity=2000)
    r.admit(("old", "iso"), KB)
    for _ in range(3):
        r.access(("old", "iso"))
    for i in range(12):
        r.admit((f"n{i}", "iso"), KB)
        r.access((f"n{i}", "iso"))
    assert ("old", "iso") in r


def test_value_remembers_frequency_across_evictions() -> None:
    policy = ValueBased(half_life=1e12)
    r = _residency(policy, capacity=1000)
    r.admit(("a", "iso"), KB)
    r.admit(("b", "iso"), KB)  # evicts a
    assert ("a", "iso") not in r
    r.admit(("a", "iso"), KB)  # a comes back with two requests and evicts b (one)
    assert ("a", "iso") in r and ("b", "iso") not in r
    assert policy.value(("a", "iso")) == pytest.approx(2 * 100 * 0.85 / 1000)


def test_value_scores_never_overflow() -> None:
    policy = ValueBased(half_life=10)
    r = _residency(policy, capacity=3000)
    for i in range(20_000):  # 2000 half-lives: 2^2000 would overflow a float
        r.admit((f"k{i % 7}", "iso"), KB) if (f"k{i % 7}", "iso") not in r else r.access((f"k{i % 7}", "iso"))
    assert 0 < policy.frequency(next(k for k in [(f"k{i}", "iso") for i in range(7)] if k in r)) < 20


@pytest.mark.parametrize("name", ["lru", "lfu", "value"])
def test_pinned_chunks_are_never_victims(name: str) -> None:
    r = _residency(make_policy(name), capacity=2000)
    r.pin("keep")
    r.admit(("keep", "iso"), KB)
    for i in range(5):
        r.admit((f"x{i}", "iso"), KB)
    assert ("keep", "iso") in r and len(r) == 2 and r.nbytes == 2000
    r.unpin("keep")
    r.admit(("y", "iso"), KB)
    r.admit(("z", "iso"), KB)
    assert ("keep", "iso") not in r


def test_a_record_that_cannot_fit_evicts_nothing() -> None:
    r = _residency(LRU(), capacity=2000)
    r.pin("p")
    r.admit(("p", "iso"), KB)
    r.admit(("a", "iso"), KB)
    held, gone = r.admit(("big", "iso"), EntryInfo(nbytes=1500, tokens=150))  # 1000 pinned: no room
    assert not held and gone == [] and ("a", "iso") in r


def test_unknown_policy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown eviction policy 'mru'"):
        make_policy("mru")


def test_memory_tier_uses_its_policy_and_reports_it() -> None:
    a, b, c = (build_record(seed=s, stats=False) for s in range(3))
    tiers = {name: MemoryTier(capacity_bytes=2 * a.nbytes, policy=name) for name in ("lru", "lfu")}
    for tier in tiers.values():
        tier.put(a)
        tier.put(b)
        for _ in range(3):
            assert tier.get(a.chunk_id) is a
        assert tier.get(b.chunk_id) is b  # b read last, a read most
        tier.put(c)
    assert a.chunk_id not in tiers["lru"] and b.chunk_id in tiers["lru"]
    assert a.chunk_id in tiers["lfu"] and b.chunk_id not in tiers["lfu"]
    stats = tiers["lfu"].stats()
    assert (stats["policy"], stats["evictions"], stats["records"]) == ("lfu", 1, 2)


def test_memory_tier_pin_survives_pressure() -> None:
    records = [build_record(seed=s, stats=False) for s in range(4)]
    tier = MemoryTier(capacity_bytes=2 * records[0].nbytes, policy="value")
    tier.pin(records[0].chunk_id)
    for record in records:
        tier.put(record)
    assert records[0].chunk_id in tier and tier.stats()["pinned_chunks"] == 1


def test_the_engine_reports_each_reused_chunks_repair_to_the_policy(smol) -> None:
    """A request reusing records tells value-based eviction how much of each it recomputed."""
    from chunkcache.engine.reuse import ReuseEngine
    from chunkcache.strategies import make_strategy

    policy = ValueBased()
    engine = ReuseEngine(*smol, store=MemoryTier(1 << 28, policy))
    chunks = [engine.encode_chunk(t)[1] for t in ("The ferry leaves at dawn.", "The market opens at four.")]
    question = engine.template.encode_question("When does the ferry leave?")
    for chunk in chunks:
        engine.precompute(chunk)  # isolated records
    engine.prefill(chunks, question, make_strategy("focus:ratio=0.5"))
    observed = {key[0]: mean for key, (mean, n) in policy._recompute.items()}
    assert set(observed) == {engine.chunk_id(c) for c in chunks}
    first, second = (observed[engine.chunk_id(c)] for c in chunks)
    assert first == 0.0  # isolated = exact in first place after the template: nothing to repair
    assert 0 < second <= 1.0  # the other is repaired


def test_value_admission_keeps_one_off_chunks_from_flushing_popular_ones() -> None:
    policy = ValueBased(half_life=1e12)
    r = _residency(policy, capacity=2000)
    for name in ("hot1", "hot2"):
        r.admit((name, "iso"), KB)
        r.access((name, "iso"))  # two requests each
    held, gone = r.admit(("once", "iso"), KB)  # one request: worth less than either
    assert not held and gone == [] and ("hot1", "iso") in r and ("hot2", "iso") in r
    held, _ = r.admit(("once", "iso"), KB)  # asked again: now as valuable as the victim, it gets in
    assert held
    lru = _residency(LRU(), capacity=2000)
    for name in ("hot1", "hot2"):
        lru.admit((name, "iso"), KB)
    assert lru.admit(("once", "iso"), KB)[0]  # LRU admits everything
