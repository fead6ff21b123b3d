"""``epic``: EPIC's LegoLink (Hu et al., "EPIC: Efficient Position-Independent Context Caching for Serving
Large Language Models", arXiv 2410.15332, section 4).

A chunk prefilled alone turns its first tokens into attention sinks; in context those few tokens distort
the attention of everything after them. LegoLink recomputes only the first k tokens of every chunk except
the first (whose isolated record is exact), at every layer, plus the question.
"""

from __future__ import annotations

import torch

from chunkcache.kv.record import ChunkRecord
from chunkcache.strategies.base import Plan, Request, Strategy, is_exact


class Epic(Strategy):
    name = "epic"
    budget_param = "k"

    def __init__(self, k: int = 16) -> None:
        if k < 0:
            raise ValueError("epic's k must be >= 0")
        self.k = k

    def select(self, req: Request, records: list[ChunkRecord | None], must: torch.Tensor) -> Plan:
        parts = [must]
        for i, (span, rec) in enumerate(zip(req.layout.chunks, records)):
            if not is_exact(req, i, rec):
                parts.append(torch.arange(span.start, min(span.end, span.start + self.k)))
        return Plan(torch.cat(parts))
