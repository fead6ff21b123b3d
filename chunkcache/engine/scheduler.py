"""Which requests run: a bounded waiting queue and the running set (continuous batching, Orca OSDI'22).

Each engine step admits waiting requests, oldest first, while (a) the step's prompt tokens stay within
``max_prefill_tokens`` (a lone request larger than that still runs, by itself), (b) fewer than
``max_running`` are running, and (c) the KV pool can give the request blocks for its prompt *and* all of
its ``max_tokens``. Reserving the whole budget at admission means a running request never runs out of
blocks, so nothing is ever preempted and recomputed; the cost is capacity held for tokens a request may
not generate. A request that cannot get blocks waits (head of line: later ones do not overtake it, so a
long prompt is not starved by a stream of short ones). A full waiting queue refuses new requests
(``QueueFullError`` → HTTP 429) instead of queueing without bound.
"""

from __future__ import annotations

import threading
from collections import deque

from chunkcache.engine.kv_blocks import KVBlocks
from chunkcache.engine.sequence import Sequence


class QueueFullError(RuntimeError):
    """The waiting queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, waiting: int, retry_after: float) -> None:
        super().__init__(f"the server is at capacity ({waiting} requests waiting); retry in {retry_after:.0f} s")
        self.retry_after = retry_after


class Scheduler:
    """Waiting queue and running set (see module docstring). ``add`` is thread-safe; ``admit`` and
    ``finish`` run on the engine thread."""

    def __init__(self, blocks: KVBlocks, max_running: int, max_waiting: int, max_prefill_tokens: int) -> None:
        if max_running < 1 or max_waiting < 0 or max_prefill_tokens < 1:
            raise ValueError("max_running and max_prefill_tokens must be >= 1 and max_waiting >= 0")
        self.blocks = blocks
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._lock = threading.Lock()

    def fits(self, seq: Sequence) -> bool:
        """Whether the request could ever run: its whole budget fits in the empty pool."""
        return self.blocks.blocks_for(seq.budget_tokens) <= self.blocks.capacity

    def add(self, seq: Sequence) -> None:
        with self._lock:
            if len(self.waiting) >= self.max_waiting + max(0, self.max_running - len(self.running)):
                raise QueueFullError(len(self.waiting), retry_after=1.0)
            self.waiting.append(seq)

    def has_work(self) -> bool:
        with self._lock:
            return bool(self.waiting or self.running)

    def take_cancelled(self) -> list[Sequence]:
        """Remove and return cancelled requests, waiting or running (their blocks are freed)."""
        with self._lock:
            gone = [s for s in self.waiting if s.handle.cancelled.is_set()]
            gone += [s for s in self.running if s.handle.cancelled.is_set()]
            self.waiting = deque(s for s in self.waiting if not s.handle.cancelled.is_set())
            self.running = [s for s in self.running if not s.handle.cancelled.is_set()]
        for s in gone:
            self._free(s)
        return gone

    def admit(self) -> list[Sequence]:
        """Move the requests this step prefills from waiting to running, with their blocks."""
        admitted: list[Sequence] = []
        tokens = 0
        with self._lock:
            while self.waiting and len(self.running) < self.max_running:
                seq = self.waiting[0]
                if admitted and tokens + seq.prompt_len > self.max_prefill_tokens:
                    break
                blocks = self.blocks.allocate(self.blocks.blocks_for(seq.budget_tokens))
                if blocks is None:
                    break
                self.waiting.popleft()
                seq.blocks = blocks
                self.running.append(seq)
                admitted.append(seq)
                tokens += seq.prompt_len
        return admitted

    def finish(self, seq: Sequence) -> None:
        """Take a finished request out of the running set and free its blocks."""
        with self._lock:
            if seq in self.running:
                self.running.remove(seq)
        self._free(seq)

    def drain(self) -> list[Sequence]:
        """Remove every request (shutdown); blocks are freed."""
        with self._lock:
            everyone = list(self.waiting) + self.running
            self.waiting, self.running = deque(), []
        for s in everyone:
            self._free(s)
        return everyone

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return len(self.waiting), len(self.running)

    def _free(self, seq: Sequence) -> None:
        if seq.blocks:
            self.blocks.release(seq.blocks)
            seq.blocks = []
