"""DiskTier: exact round trips, lazy layer reads, atomic writes, corruption handling, variants, counters."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import chunkcache.store.disk as disk_module
from chunkcache.kv.record import ISOLATED, ChunkRecord
from chunkcache.store import DiskTier
from store_helpers import FP, assert_same_record, build_record, flip_byte, tensor_span

PREFIX = ("a" * 64, "b" * 64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("stats", [True, False])
@pytest.mark.parametrize("prefix_ids", [(), PREFIX])
@pytest.mark.parametrize("exact", [True, False])
def test_round_trip_is_exact(disk: DiskTier, dtype: torch.dtype, stats: bool, prefix_ids: tuple[str, ...],
                             exact: bool) -> None:
    record = build_record(dtype=dtype, stats=stats, prefix_ids=prefix_ids, exact=exact)
    disk.put(record)
    assert_same_record(disk.get(record.chunk_id, record.variant), record)


@pytest.mark.parametrize("prefix_ids, exact", [((), True), (PREFIX, False)])
def test_version_1_file_without_exact_flag_is_read(disk: DiskTier, prefix_ids: tuple[str, ...], exact: bool) -> None:
    """Files written before the flag existed: isolated records are exact, captured variants are not."""
    record = build_record(prefix_ids=prefix_ids, exact=not exact)  # the flag written is then removed
    disk.put(record)
    path = disk.path(record.chunk_id, record.variant)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    del meta["exact"]
    save_file(tensors, str(path), metadata={**meta, "format_version": "1"})
    got = disk.get(record.chunk_id, record.variant)
    assert got is not None and got.exact is exact


@pytest.mark.parametrize("flag", [None, "yes"])
def test_version_2_file_needs_a_valid_exact_flag(disk: DiskTier, flag: str | None,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    record = build_record(prefix_ids=PREFIX)
    disk.put(record)
    path = disk.path(record.chunk_id, record.variant)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    meta.pop("exact")
    if flag is not None:
        meta["exact"] = flag
    save_file(tensors, str(path), metadata=meta)
    _assert_dropped(disk, record, caplog)


def test_file_layout_and_header(disk: DiskTier) -> None:
    record = build_record(prefix_ids=PREFIX)
    disk.put(record)
    path = disk.root / "records" / record.chunk_id[:2] / record.chunk_id / f"{record.variant}.safetensors"
    assert path == disk.path(record.chunk_id, record.variant) and path.is_file()
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        names = set(f.keys())
        assert f.get_tensor("tokens").dtype == torch.int64
        assert f.get_tensor("k.0").dtype == torch.bfloat16
        assert f.get_tensor("inter").dtype == torch.float32
    assert names == {"k.0", "k.1", "k.2", "v.0", "v.1", "v.2", "tokens", "inter", "intra", "outside"}
    assert meta["fingerprint"] == FP and meta["chunk_id"] == record.chunk_id
    assert json.loads(meta["prefix_ids"]) == list(PREFIX)
    assert meta["format_version"] == "2" and len(meta["checksum"]) == 64
    assert meta["exact"] == "0"  # a captured variant is not exact unless its capture says so


def test_get_misses_and_counts(disk: DiskTier) -> None:
    record = build_record()
    assert disk.get(record.chunk_id) is None
    disk.put(record)
    assert disk.get(record.chunk_id) is not None
    assert disk.get(record.chunk_id, "0123456789abcdef") is None
    stats = disk.stats()
    assert (stats["hits"], stats["misses"], stats["corrupt"]) == (1, 2, 0)
    assert stats["hit_rate"] == pytest.approx(1 / 3)


def test_get_layers_loads_only_requested_layers(disk: DiskTier) -> None:
    record = build_record()
    disk.put(record)
    path = disk.path(record.chunk_id)
    [(k1, v1)] = disk.get_layers(record.chunk_id, ISOLATED, [1])
    assert torch.equal(k1, record.keys[1]) and torch.equal(v1, record.values[1])
    # Damage layer 0: reading layer 2 alone neither touches nor verifies it, so it still succeeds ...
    flip_byte(path, tensor_span(path, "k.0")[0])
    [(k2, v2)] = disk.get_layers(record.chunk_id, ISOLATED, [2])
    assert torch.equal(k2, record.keys[2]) and torch.equal(v2, record.values[2])
    assert path.exists()
    # ... while reading layer 0 verifies it, finds the damage, and drops the file.
    assert disk.get_layers(record.chunk_id, ISOLATED, [0]) is None
    assert not path.exists()
    assert disk.stats()["corrupt"] == 1


def test_get_layers_counts_a_lookup_only_when_asked(disk: DiskTier) -> None:
    record = build_record()
    disk.put(record)
    disk.get_layers(record.chunk_id, ISOLATED, [0])
    assert disk.stats()["hits"] == 0
    disk.get_layers(record.chunk_id, ISOLATED, [0, 1, 2], count_lookup=True)
    disk.get_layers("ff" * 32, ISOLATED, [0], count_lookup=True)
    assert (disk.stats()["hits"], disk.stats()["misses"]) == (1, 1)
    with pytest.raises(IndexError):
        disk.get_layers(record.chunk_id, ISOLATED, [3])


def test_put_leaves_no_temp_file(disk: DiskTier) -> None:
    record = build_record()
    disk.put(record)
    disk.put(record)  # overwrite
    assert os.listdir(disk.path(record.chunk_id).parent) == ["isolated.safetensors"]


def test_failed_write_keeps_old_record_and_no_temp(disk: DiskTier, monkeypatch: pytest.MonkeyPatch) -> None:
    old = build_record()
    disk.put(old)
    new = dataclasses.replace(old, keys=[k + 1 for k in old.keys])

    def crash(src: Path, dst: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(disk_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        disk.put(new)
    monkeypatch.undo()
    assert os.listdir(disk.path(old.chunk_id).parent) == ["isolated.safetensors"]
    assert_same_record(disk.get(old.chunk_id), old)


def _assert_dropped(disk: DiskTier, record: ChunkRecord, caplog: pytest.LogCaptureFixture) -> None:
    path = disk.path(record.chunk_id, record.variant)
    with caplog.at_level(logging.WARNING, logger="chunkcache.store.disk"):
        assert disk.get(record.chunk_id, record.variant) is None
    assert not path.exists()
    assert any(str(path) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    stats = disk.stats()
    assert (stats["corrupt"], stats["misses"], stats["hits"]) == (1, 1, 0)


@pytest.mark.parametrize("tensor", ["k.0", "v.2", "tokens", "outside"])
def test_flipped_byte_is_detected_and_dropped(
    disk: DiskTier, tensor: str, caplog: pytest.LogCaptureFixture
) -> None:
    record = build_record()
    disk.put(record)
    path = disk.path(record.chunk_id)
    start, end = tensor_span(path, tensor)
    flip_byte(path, (start + end) // 2)
    _assert_dropped(disk, record, caplog)


def test_flipped_header_byte_is_detected_and_dropped(disk: DiskTier, caplog: pytest.LogCaptureFixture) -> None:
    record = build_record()
    disk.put(record)
    path = disk.path(record.chunk_id)
    # Valid JSON that still parses, so only the header checks can catch it: a 3-layer file claiming 2.
    path.write_bytes(path.read_bytes().replace(b'"n_layers":"3"', b'"n_layers":"2"'))
    _assert_dropped(disk, record, caplog)


def test_truncated_file_is_detected_and_dropped(disk: DiskTier, caplog: pytest.LogCaptureFixture) -> None:
    record = build_record()
    disk.put(record)
    path = disk.path(record.chunk_id)
    path.write_bytes(path.read_bytes()[:-7])
    _assert_dropped(disk, record, caplog)


def test_foreign_model_file_is_dropped(tmp_path: Path, disk: DiskTier, caplog: pytest.LogCaptureFixture) -> None:
    ours = build_record()
    theirs = dataclasses.replace(build_record(fingerprint="other-model"), chunk_id=ours.chunk_id)
    with DiskTier(disk.root, "other-model") as other:
        other.put(theirs)  # same path as ours would have, written by another model's store
    assert disk.path(ours.chunk_id).exists()
    _assert_dropped(disk, ours, caplog)


def test_put_refuses_another_models_record(disk: DiskTier) -> None:
    with pytest.raises(ValueError, match="other-model"):
        disk.put(build_record(fingerprint="other-model"))
    assert disk.stats()["records"] == 0


def test_verify_removes_bad_files(disk: DiskTier) -> None:
    good, flipped, truncated = (build_record(seed=s) for s in range(3))
    for record in (good, flipped, truncated):
        disk.put(record)
    p_flip, p_trunc = disk.path(flipped.chunk_id), disk.path(truncated.chunk_id)
    flip_byte(p_flip, tensor_span(p_flip, "v.1")[0])
    p_trunc.write_bytes(p_trunc.read_bytes()[:100])
    n_ok, bad = disk.verify()
    assert n_ok == 1
    assert sorted(bad) == sorted([str(p_flip), str(p_trunc)])
    assert not p_flip.exists() and not p_trunc.exists()
    assert disk.stats()["corrupt"] == 2
    assert_same_record(disk.get(good.chunk_id), good)
    assert disk.verify() == (1, [])


def _age(path: Path, seconds_ago: int) -> None:
    t = path.stat().st_mtime - seconds_ago
    os.utime(path, (t, t))


def test_max_variants_drops_oldest_but_keeps_isolated(tmp_path: Path) -> None:
    with DiskTier(tmp_path / "store", FP, max_variants=3) as disk:
        iso, a, b, c, d = (build_record(prefix_ids=p) for p in [(), ("a" * 64,), ("b" * 64,), ("c" * 64,), ("d" * 64,)])
        for record in (iso, a, b):
            disk.put(record)
        _age(disk.path(iso.chunk_id, iso.variant), 300)  # the oldest file of all, and still kept
        _age(disk.path(a.chunk_id, a.variant), 200)
        _age(disk.path(b.chunk_id, b.variant), 100)
        disk.put(c)
        assert disk.variants(iso.chunk_id) == sorted([ISOLATED, b.variant, c.variant])
        _age(disk.path(c.chunk_id, c.variant), 200)  # now c is older than b
        disk.put(d)
        assert disk.variants(iso.chunk_id) == sorted([ISOLATED, b.variant, d.variant])
        assert_same_record(disk.get(iso.chunk_id), iso)


def test_counters_persist_across_instances(tmp_path: Path) -> None:
    record = build_record()
    with DiskTier(tmp_path / "store", FP) as first:
        first.put(record)
        first.get(record.chunk_id)
        first.get("ab" * 32)
    with DiskTier(tmp_path / "store", FP) as second, DiskTier(tmp_path / "store", FP) as third:
        assert (second.stats()["hits"], second.stats()["misses"]) == (1, 1)
        third.get(record.chunk_id)
        assert second.stats()["hits"] == 2  # a live instance sees another's lookups


def test_delete_contains_clear_and_stats(disk: DiskTier) -> None:
    r1, r1b, r2 = build_record(seed=1), build_record(seed=1, prefix_ids=PREFIX), build_record(seed=2)
    for record in (r1, r1b, r2):
        disk.put(record)
    stats = disk.stats()
    assert (stats["records"], stats["chunks"]) == (3, 2)
    assert stats["bytes"] == sum(disk.path(r.chunk_id, r.variant).stat().st_size for r in (r1, r1b, r2))
    assert r1.chunk_id in disk and disk.variants(r1.chunk_id) == sorted([ISOLATED, r1b.variant])
    assert disk.delete(r1.chunk_id) == 2
    assert r1.chunk_id not in disk and disk.get(r1.chunk_id) is None
    assert not disk.path(r1.chunk_id).parent.exists()
    assert disk.delete(r1.chunk_id) == 0
    disk.clear()
    assert r2.chunk_id not in disk and disk.stats()["records"] == 0
    assert disk.stats()["misses"] == 1  # counters survive clear()


@pytest.mark.parametrize("bad", ["../../etc", "a/b", "", "x"])
def test_unsafe_ids_are_refused(disk: DiskTier, bad: str) -> None:
    with pytest.raises(ValueError):
        disk.get(bad)
    assert bad not in disk
