"""``parallel``: order-invariant parallel positions (McIlroy-Young, Brown, Olson, Zhang, Dwork, "Set-Based
Prompting: Provably Solving the Language Model Order Dependency Problem", arXiv 2406.06581; the parallel
encoding of APE, arXiv 2502.05431, without its temperature and scale).

Set-Based Prompting lays sub-sequences that form a set side by side: they get the same position ids (each
starts where the common prefix ends) and an attention mask that keeps them from attending to one another;
text after the set attends to all of them. The paper proves the model's output is then the same for every
order of the set, which is what we test. For chunk reuse it has a second property: a chunk
placed this way sees exactly what it saw when its isolated record was computed (the template prefix and
itself, at the same positions), so its cached K/V are exact and nothing but the question is computed.

Where ours deviates, and what it costs:

* Order invariance in the paper is exact arithmetic; in floating point the question's attention sums over
  keys in memory order, so two orders of the same chunks would differ in the last bits. We sort the chunks
  by chunk id before assembling the prompt (``arrange``), so every order gives the same prompt, bit for
  bit, and the theorem's invariance holds in floats too.
* Chunks never see each other, at any layer; only the question and the answer combine them. Models were
  trained on sequential text, so questions that need two passages read together (multi-hop) lose accuracy
  against a full prefill; the bench (docs/benchmarks.md) measures how much. APE's temperature and scale
  (strategies/ape.py) are the paper's correction for it; ``parallel`` is the uncorrected layout.
* A chunk without an isolated record is computed in the request at its parallel positions, which gives
  exactly the states its isolated record would hold; it is captured as that record.
"""

from __future__ import annotations

import torch

from chunkcache.kv.record import ISOLATED, ChunkRecord
from chunkcache.strategies.base import Plan, Request, Strategy
from chunkcache.strategies.layouts import PlacedPlan, canonical_order, graph_placement, parallel_identities


class Parallel(Strategy):
    name = "parallel"
    expected_recompute = 0.0

    def arrange(self, chunk_ids: list[str], edges: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
        """Chunks sorted by chunk id; edges ignored (no chunk sees another)."""
        return canonical_order(chunk_ids), []

    def wanted_variants(self, stored: list[str], in_place: str) -> list[str]:
        return [ISOLATED] if ISOLATED in stored else []

    def choose_variants(self, req: Request) -> list[ChunkRecord | None]:
        """Per chunk its isolated record, else None (computed in the request, in parallel)."""
        return [next((c for c in cands if not c.prefix_ids), None) for cands in req.candidates]

    def select(self, req: Request, records: list[ChunkRecord | None], must: torch.Tensor) -> Plan:
        return PlacedPlan(must, graph_placement(req.layout), parallel_identities(req.layout))
