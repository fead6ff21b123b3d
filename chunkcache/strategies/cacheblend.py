"""``cacheblend``: CacheBlend (Yao et al., "CacheBlend: Fast Large Language Model Serving for RAG with
Cached Knowledge Fusion", arXiv 2405.16444, section 4.2–4.3).

Layers below the check layer compute every token. At the check layer (default 1, as in the paper) each
context token's fresh value vector is compared with its cached one; the top ``ratio`` of context tokens by
deviation ‖V_fresh − V_cached‖² (summed over heads and dims) are the high-KV-deviation (HKVD) tokens, and
only they (plus the question and any uncached chunk) are computed in the remaining layers.

Deviation on V, not K (``deviation="v"`` default, ``"k"`` available): a layer's attention output is a convex
combination of value vectors, so ‖ΔV‖ bounds how much a token's stale entry can move every later query's
output directly, whereas a key deviation acts only through the softmax weights. CacheBlend's own
implementation also ranks by value deviation.
"""

from __future__ import annotations

import math

import torch

from chunkcache.kv.record import ChunkRecord
from chunkcache.strategies.base import Plan, Request, Strategy, is_exact


class BlendPlan(Plan):
    def __init__(self, initial: torch.Tensor, must: torch.Tensor, candidates: torch.Tensor, budget: int,
                 check_layer: int, deviation: str) -> None:
        super().__init__(initial)
        self.must = must
        self.candidates = candidates
        self.budget = budget
        self.check_layer = check_layer
        self.deviation = deviation
        self.kept = self.initial  # the set returned last: after the prefill, the one computed at every layer

    def computed_throughout(self) -> torch.Tensor:
        return self.kept

    def wants_observation(self, layer: int) -> bool:
        return layer == self.check_layer

    def next_positions(self, layer, positions, fresh, cached):
        if layer != self.check_layer or cached is None:
            return positions
        idx = 0 if self.deviation == "k" else 1
        dev = (fresh[idx].float() - cached[idx].float()).pow(2).sum(dim=(0, 2))  # [|positions|]
        is_cand = torch.isin(positions, self.candidates.to(positions.device))
        score = torch.where(is_cand, dev, torch.full_like(dev, -1.0))
        k = min(self.budget, int(is_cand.sum()))
        # stable order: sort by (-score, position) so ties resolve deterministically
        order = torch.argsort(-score, stable=True)[:k]
        self.kept = torch.unique(torch.cat([self.must.to(positions.device), positions[order]]))
        return self.kept


class CacheBlend(Strategy):
    name = "cacheblend"
    budget_param = "ratio"

    def __init__(self, ratio: float = 0.15, check_layer: int = 1, deviation: str = "v") -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError("cacheblend's ratio must be in [0, 1]")
        if deviation not in ("k", "v"):
            raise ValueError("cacheblend's deviation must be 'k' or 'v'")
        self.ratio, self.check_layer, self.deviation = ratio, check_layer, deviation

    def select(self, req: Request, records: list[ChunkRecord | None], must: torch.Tensor) -> Plan:
        layout = req.layout
        inexact = [span.range() for i, (span, rec) in enumerate(zip(layout.chunks, records))
                   if rec is not None and not is_exact(req, i, rec)]
        candidates = torch.cat(inexact) if inexact else torch.empty(0, dtype=torch.long)
        budget = math.ceil(self.ratio * layout.context_tokens)
        if candidates.numel() == 0 or self.check_layer >= req.n_layers - 1:
            return Plan(must)
        start = torch.cat([must, candidates])
        return BlendPlan(start, must, candidates, budget, self.check_layer, self.deviation)
