"""``prefix``: exact prefix caching, what vLLM's automatic prefix caching and SGLang's RadixAttention give.

Reuse the longest run of leading chunks whose records are exact and were computed after exactly the
chunks that precede them now (``is_exact``; the first chunk's isolated record always qualifies: it was
computed right after the same template prefix); recompute everything after it. A variant captured from a
partly recomputed request is not exact, so it never extends the reused prefix: ``prefix`` over exact
records gives what ``full`` gives.
"""

from __future__ import annotations

import torch

from chunkcache.kv.record import ChunkRecord
from chunkcache.strategies.base import Plan, Request, Strategy, is_exact


class Prefix(Strategy):
    name = "prefix"
    expected_recompute = 1.0  # everything after the first chunk that is not exact in place

    def select(self, req: Request, records: list[ChunkRecord | None], must: torch.Tensor) -> Plan:
        layout = req.layout
        start = layout.prefix.end
        for i, (span, rec) in enumerate(zip(layout.chunks, records)):
            if not is_exact(req, i, rec):
                break
            start = span.end
        return Plan(torch.arange(start, layout.length))
