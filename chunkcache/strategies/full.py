"""``full``: recompute every token — the quality reference no reuse strategy can beat."""

from __future__ import annotations

import torch

from chunkcache.kv.record import ChunkRecord
from chunkcache.strategies.base import Plan, Request, Strategy


class Full(Strategy):
    name = "full"
    expected_recompute = 1.0

    def choose_variants(self, req: Request) -> list[ChunkRecord | None]:
        return [None] * len(req.candidates)

    def select(self, req: Request, records: list[ChunkRecord | None], must: torch.Tensor) -> Plan:
        return Plan(torch.arange(req.layout.length))
