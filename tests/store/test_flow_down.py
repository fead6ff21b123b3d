"""Flow-down: a write lands in the fastest tier at once and reaches the slower ones in the background; a
delete or clear is never undone by a write still queued; close finishes the queue."""

from __future__ import annotations

import threading
from pathlib import Path

from chunkcache.kv.record import ISOLATED, ChunkRecord
from chunkcache.store import DiskTier, MemoryTier, TieredStore
from store_helpers import FP, assert_same_record, build_record


class GatedDisk(DiskTier):
    """A disk tier whose writes wait for a gate: stands for a slow disk, so queued writes can be observed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, FP)
        self.gate = threading.Event()

    def put(self, record: ChunkRecord) -> None:
        self.gate.wait(10)
        super().put(record)


def test_write_lands_fast_and_flows_down(tmp_path: Path) -> None:
    memory, disk = MemoryTier(1 << 20), GatedDisk(tmp_path / "store")
    store = TieredStore([memory, disk], flow_down=True)
    record = build_record()
    store.put(record)  # returns although the disk write is blocked
    assert record.chunk_id in memory and record.chunk_id not in disk
    assert store.stats()["flow_down"]["pending"] + int(not disk.gate.is_set()) >= 1
    disk.gate.set()
    store.flush()
    assert_same_record(disk.get(record.chunk_id), record)
    assert store.stats()["flow_down"]["written"] == 1
    store.close()


def test_delete_and_clear_win_over_queued_writes(tmp_path: Path) -> None:
    memory, disk = MemoryTier(1 << 20), GatedDisk(tmp_path / "store")
    store = TieredStore([memory, disk], flow_down=True)
    doomed, kept, cleared = build_record(seed=1), build_record(seed=2), build_record(seed=3)
    store.put(doomed)
    store.put(kept)
    store.delete(doomed.chunk_id)
    disk.gate.set()
    store.flush()
    assert doomed.chunk_id not in disk and doomed.chunk_id not in memory
    assert kept.chunk_id in disk
    disk.gate.clear()
    store.put(cleared)
    store.clear()
    disk.gate.set()
    store.flush()
    assert cleared.chunk_id not in disk and list(disk.chunk_tokens()) == []
    store.close()


def test_close_finishes_the_queue(tmp_path: Path) -> None:
    records = [build_record(seed=s) for s in range(10)]
    store = TieredStore([MemoryTier(1 << 20), DiskTier(tmp_path / "store", FP)], flow_down=True)
    for record in records:
        store.put(record)
    store.close()
    with DiskTier(tmp_path / "store", FP) as disk:
        for record in records:
            assert_same_record(disk.get(record.chunk_id, ISOLATED), record)


def test_a_failing_slow_tier_costs_a_miss_not_the_writer(tmp_path: Path) -> None:
    class Broken(DiskTier):
        def put(self, record: ChunkRecord) -> None:
            raise OSError("disk full")

    memory = MemoryTier(1 << 20)
    store = TieredStore([memory, Broken(tmp_path / "store", FP)], flow_down=True)
    record = build_record()
    store.put(record)
    store.flush()
    assert store.stats()["flow_down"]["errors"] == 1
    assert_same_record(store.get(record.chunk_id), record)  # still served from memory
    store.close()
