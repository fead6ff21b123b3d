"""Flow-down: a record written to the fastest tier reaches the slower ones on a background thread.

DESIGN section 4: a request that computed a chunk should not wait for its record to reach disk (an fsynced
safetensors file) or Redis before answering; on an 8B model one chunk is 64 MB. The tiered store writes the
fastest tier in the caller's thread and queues the rest here. The queue is bounded (``max_pending``
records): when the slow tiers fall behind, writers wait instead of piling up memory.

Consistency: each tier's write is atomic on its own (disk: temp file and rename; Redis: one transaction), so
a crash at any point leaves every tier with whole records or none; a record still queued is simply not in
the slower tiers yet (a later miss there recomputes it). A chunk deleted, or a store cleared, after its write
was queued must not come back: deletes and clears bump a generation, and the worker, holding the same lock,
skips writes queued under an older one.
"""

from __future__ import annotations

import logging
import queue
import threading

from chunkcache.kv.record import ChunkRecord
from chunkcache.store.base import KVTier

log = logging.getLogger(__name__)


class FlowDown:
    """One background writer for a tiered store's slower tiers (see module docstring)."""

    def __init__(self, max_pending: int = 64) -> None:
        self._queue: queue.Queue = queue.Queue(max_pending)
        self._lock = threading.Lock()
        self._epoch = 0
        self._generation: dict[str, int] = {}
        self.written = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="chunkcache-flow-down", daemon=True)
        self._thread.start()

    def submit(self, record: ChunkRecord, tiers: list[KVTier]) -> None:
        """Queue ``record`` for ``tiers`` (written in that order); waits while the queue is full."""
        with self._lock:
            stamp = (self._epoch, self._generation.get(record.chunk_id, 0))
        self._queue.put((record, tiers, stamp))

    def forget(self, chunk_id: str) -> None:
        """Drop queued writes of ``chunk_id`` (it is being deleted); call before deleting it from the tiers."""
        with self._lock:
            self._generation[chunk_id] = self._generation.get(chunk_id, 0) + 1

    def forget_all(self) -> None:
        """Drop every queued write (the store is being cleared)."""
        with self._lock:
            self._epoch += 1

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def flush(self) -> None:
        """Wait until every queued write is done."""
        self._queue.join()

    def close(self) -> None:
        """Finish the queued writes and stop the thread."""
        self.flush()
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            record, tiers, stamp = item
            try:
                for tier in tiers:
                    with self._lock:  # a delete or clear either comes before this write or after it
                        if stamp != (self._epoch, self._generation.get(record.chunk_id, 0)):
                            break
                        tier.put(record)
                else:
                    self.written += 1
            except Exception:  # noqa: BLE001 - a failed background write costs a later miss, never the process
                self.errors += 1
                log.exception("flow-down of chunk %s to a slower tier failed", record.chunk_id)
            finally:
                self._queue.task_done()
        self._queue.task_done()
