"""``graph``: graph-structured chunk attention (Wang, Wang, Li, Liu, Miao, Wang, Li, "Graph-KV: Breaking
Sequence via Injecting Structural Biases into Large Language Models", arXiv 2506.07334, section 3).

A request may carry edges between its chunks, source -> target: a page and the pages it links to, a code
chunk and the definitions it uses (rag/links.py). Graph-KV encodes every segment in parallel first; then a
target segment's states are computed again attending only to its sources' KV (and its own tokens):

    o_j = softmax(Q_j [K_N(j); K_j]^T / sqrt(d)) [V_N(j); V_j]        N(j) = sources of target j

a block mask shaped like the graph, one message-passing step. Positions are allocated so that no
segment sits far down a long sequence: sources share the range right after the shared prefix, a target
starts where its sources end, and the question follows the furthest-reaching segment and attends to all
(strategies/layouts.py ``graph_placement``). Without edges the layout is ``parallel``.

For chunk reuse: sources are used exactly as their isolated records (they sit where those were computed);
a target is computed in the request once, then stored as a *graph variant* keyed by its sources
(``layouts.graph_variant_ids``), which is exact whenever the same sources surround it again, so later
requests with that structure compute nothing but the question.

Where ours deviates from the paper, and what it costs:

* The paper evaluates models fine-tuned to read block-structured attention (its parallel-encoding
  baselines are fine-tuned too). We are training-free: an off-the-shelf model meets targets that skip
  the chunks between them and positions that repeat across sources, layouts it never saw in training.
  Accuracy against a full sequential prefill is therefore lower than the paper's; the bench measures it
  (docs/benchmarks.md) rather than assuming the paper's gains carry over.
* Edges are used as given, one message-passing step per level: a chunk that is both a target and a
  source is computed first, and its targets then read its fresh states. Only targets all of whose sources
  are plain sources are stored as graph variants; deeper targets are recomputed in every request (their
  states depend on more than their direct sources, which the variant key names).
* A cycle among the retrieved chunks is broken where the order meets it (``layouts.topological_order``):
  its back edge is dropped, so every attended source precedes its target in the prompt.
* Chunks are ordered by level, then chunk id, so the prompt does not depend on retrieval order.
"""

from __future__ import annotations

import torch

from chunkcache.engine.prompt import Layout
from chunkcache.kv.record import ISOLATED, ChunkRecord, variant_name
from chunkcache.strategies.base import Plan, Request, Strategy
from chunkcache.strategies.layouts import (
    Identity, PlacedPlan, graph_placement, graph_variant_ids, sources_of, topological_order,
)


class Graph(Strategy):
    name = "graph"
    expected_recompute = 0.0  # once its graph variants exist

    def arrange(self, chunk_ids: list[str], edges: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
        """Every source before its targets, ties by chunk id; edges that close a cycle dropped."""
        return topological_order(chunk_ids, edges)

    def in_place_variants(self, layout: Layout) -> list[str]:
        """Sources: the isolated record; a target: its graph variant for the sources it has here."""
        return [variant_name(graph_variant_ids([layout.chunk_ids[s] for s in src])) if src else ISOLATED
                for src in sources_of(layout)]

    def wanted_variants(self, stored: list[str], in_place: str) -> list[str]:
        """Only the variant exact in this structure: a target without one is computed (and then stored)."""
        return [in_place] if in_place in stored else []

    def choose_variants(self, req: Request) -> list[ChunkRecord | None]:
        wanted = self.in_place_variants(req.layout)
        return [next((c for c in cands if c.variant == want and c.exact), None)
                for cands, want in zip(req.candidates, wanted)]

    def select(self, req: Request, records: list[ChunkRecord | None], must: torch.Tensor) -> Plan:
        layout = req.layout
        sources = sources_of(layout)
        roots = [not src for src in sources]
        identities: list[Identity] = []
        for src in sources:
            if not len(layout.prefix):  # a plain prompt: not the template records were computed after
                identities.append(None)
            elif not src:
                identities.append(([], True))
            elif all(roots[s] for s in src):
                identities.append((graph_variant_ids([layout.chunk_ids[s] for s in src]), True))
            else:
                identities.append(None)
        return PlacedPlan(must, graph_placement(layout, sources), identities)
