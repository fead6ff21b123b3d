"""``naive``: full reuse — every chunk's KV as cached (position-corrected by RoPE), only the question is
computed. The lower bound of cost and of fidelity."""

from __future__ import annotations

import torch

from chunkcache.kv.record import ChunkRecord
from chunkcache.strategies.base import Plan, Request, Strategy


class Naive(Strategy):
    name = "naive"
    expected_recompute = 0.0

    def select(self, req: Request, records: list[ChunkRecord | None], must: torch.Tensor) -> Plan:
        return Plan(must)
