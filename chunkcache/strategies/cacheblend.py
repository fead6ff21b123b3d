"""``cacheblend``: CacheBlend (Yao et al., "CacheBlend: Fast Large Language Model Serving for RAG with
Cached Knowledge Fusion", arXiv 2405.16444, section 4.2–4.3).

The candidates are the tokens of chunks whose record is not exact in place (``is_exact``: the first chunk's
isolated record, or an exact variant after the same chunks, needs no repair). Layers up to the check layer
compute every candidate. At a filtering layer each computed candidate's fresh value vector is compared with
its cached one, and only the candidates with the highest deviation ‖V_fresh − V_cached‖² (summed over heads
and dims) — the high-KV-deviation (HKVD) tokens — stay computed in the following layers, together with the
question and any uncached chunk. The target is ⌈ratio · |candidates|⌉ tokens.

Two selection schedules:

* one-shot (``gradual=0``, the default): a single filtering layer, ``check_layer`` (default 1), keeps the
  target. This is what the authors' released implementation does (CacheBlend's vLLM prototype:
  ``check_layers=[1]``), and what the benchmarks here were run with.
* gradual filtering (``gradual=g`` ≥ 1), the scheme the paper describes in section 4.3 (Figure 9): at layer
  ``check_layer`` keep a fraction r_1 a little above the target r, recompute only those in the next layer,
  keep r_2 < r_1 of them by that layer's deviation, and so on, so the selected tokens have high deviation
  on several layers rather than one. The paper gives no schedule; here the kept fraction falls linearly
  from min(1, 2r) at ``check_layer`` to r at ``check_layer + g``.

Filtering must end before the model's last layer (a selection there would select nothing); a check layer
that does not is refused when the strategy meets the model.

Deviation on V, not K (``deviation="v"`` default, ``"k"`` available): a layer's attention output is a convex
combination of value vectors, so ‖ΔV‖ bounds how much a token's stale entry can move every later query's
output directly, whereas a key deviation acts only through the softmax weights. CacheBlend's own
implementation also ranks by value deviation. Ties are broken by position, so selection is deterministic.
"""

from __future__ import annotations

import math

import torch

from chunkcache.kv.record import ChunkRecord
from chunkcache.strategies.base import Plan, Request, Strategy, stale_chunks


class BlendPlan(Plan):
    """Computes ``initial`` (``must`` plus every candidate) until ``check_layer``; after filtering layer
    ``check_layer + s`` only ``must`` and the ``keep[s]`` candidates of highest deviation remain."""

    def __init__(self, initial: torch.Tensor, must: torch.Tensor, candidates: torch.Tensor, keep: list[int],
                 check_layer: int, deviation: str) -> None:
        super().__init__(initial)
        self.must = must
        self.candidates = candidates
        self.keep = keep
        self.check_layer = check_layer
        self.deviation = deviation
        self.kept = self.initial  # the set returned last: after the prefill, the one computed at every layer

    def computed_throughout(self) -> torch.Tensor:
        return self.kept

    def wants_observation(self, layer: int) -> bool:
        return 0 <= layer - self.check_layer < len(self.keep)

    def next_positions(self, layer: int, positions: torch.Tensor,
                       fresh: tuple[torch.Tensor, torch.Tensor],
                       cached: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        if not self.wants_observation(layer) or cached is None:
            return positions
        idx = 0 if self.deviation == "k" else 1
        dev = (fresh[idx].float() - cached[idx].float()).pow(2).sum(dim=(0, 2))  # [|positions|]
        is_cand = torch.isin(positions, self.candidates.to(positions.device))
        score = torch.where(is_cand, dev, torch.full_like(dev, -1.0))
        k = min(self.keep[layer - self.check_layer], int(is_cand.sum()))
        # positions are sorted and the sort is stable, so ties go to the earlier position
        order = torch.argsort(-score, stable=True)[:k]
        self.kept = torch.unique(torch.cat([self.must.to(positions.device), positions[order]]))
        return self.kept


class CacheBlend(Strategy):
    name = "cacheblend"
    budget_param = "ratio"

    def __init__(self, ratio: float = 0.15, check_layer: int = 1, deviation: str = "v", gradual: int = 0) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError("cacheblend's ratio must be in [0, 1]")
        if deviation not in ("k", "v"):
            raise ValueError("cacheblend's deviation must be 'k' or 'v'")
        if not isinstance(check_layer, int) or check_layer < 0:
            raise ValueError("cacheblend's check_layer must be an integer >= 0")
        if not isinstance(gradual, int) or gradual < 0:
            raise ValueError("cacheblend's gradual must be an integer >= 0 (0: one-shot selection)")
        self.ratio, self.check_layer, self.deviation, self.gradual = ratio, check_layer, deviation, gradual
        self.expected_recompute = ratio

    def fractions(self) -> list[float]:
        """Fraction of the candidates kept after each filtering layer (module docstring)."""
        if self.gradual == 0:
            return [self.ratio]
        r0 = min(1.0, 2 * self.ratio)
        return [r0 + (self.ratio - r0) * s / self.gradual for s in range(self.gradual + 1)]

    def select(self, req: Request, records: list[ChunkRecord | None], must: torch.Tensor) -> Plan:
        last = self.check_layer + self.gradual
        if last >= req.n_layers - 1:
            raise ValueError(
                f"cacheblend filters at layers {self.check_layer}..{last}, but the model has {req.n_layers} "
                f"layers: the last filtering layer must be at most {req.n_layers - 2}")
        layout = req.layout
        inexact = [layout.chunks[i].range() for i in stale_chunks(req, records)]
        if not inexact:
            return Plan(must)
        candidates = torch.cat(inexact)
        keep = [math.ceil(f * candidates.numel() - 1e-9) for f in self.fractions()]  # 1e-9: fp noise
        return BlendPlan(torch.cat([must, candidates]), must, candidates, keep, self.check_layer, self.deviation)
