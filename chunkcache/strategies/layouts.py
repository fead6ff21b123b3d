"""Prompt layouts other than one causal sequence, and the chunk orders that go with them.

A ``Placement`` (models/base.py) gives every prompt token a RoPE position and an attention graph over
segments (template prefix, each chunk, the question). Three layouts are built here:

* **parallel** (``ape`` and ``parallel``): every chunk at the positions right after the template prefix,
  seeing only the prefix and itself; the question after the longest chunk, seeing everything. A chunk's
  isolated record (computed right after the prefix) is then exactly its state in the request.
* **graph** (``graph``): chunks with incoming edges (targets) also see their sources and sit after the
  furthest-reaching source; everything else is parallel (Graph-KV, strategies/graph.py).

A placed plan also says under which identity each chunk's states may be stored
(``PlacedPlan.identities``): a chunk placed exactly as when isolated is its isolated record, exact; a
target is a graph variant keyed by its sources; capture must not name either after the chunks that
happen to precede it in token order, as it does for sequential prompts.
"""

from __future__ import annotations

import torch

from chunkcache.engine.prompt import Layout
from chunkcache.models.base import Placement
from chunkcache.strategies.base import Plan

GRAPH_MARK = "<graph>"  # first entry of a graph variant's prefix ids: no sequential prefix can equal it

Identity = tuple[list[str], bool] | None  # (prefix ids of the variant, exact), or None: do not capture


class PlacedPlan(Plan):
    """A static plan whose prompt the executor lays out with ``placement``. ``identities[i]``: how chunk i's
    states may be captured (module docstring); None keeps the sequential rule of ``Decision.identities``."""

    def __init__(self, initial: torch.Tensor, placement: Placement,
                 identities: list[Identity] | None = None) -> None:
        super().__init__(initial)
        self.placement = placement
        self.identities = identities


def graph_variant_ids(sources: list[str]) -> list[str]:
    """Prefix ids of the graph variant of a target whose sources are the chunks ``sources`` (any order)."""
    return [GRAPH_MARK, *sorted(sources)]


def sources_of(layout: Layout) -> list[list[int]]:
    """Per chunk, the indices of its sources (``layout.edges``), ascending."""
    srcs: list[list[int]] = [[] for _ in layout.chunks]
    for s, t in layout.edges:
        srcs[t].append(s)
    return [sorted(set(s)) for s in srcs]


def graph_placement(layout: Layout, sources: list[list[int]] | None = None, temperature: float = 1.0,
                    scale: float = 1.0) -> Placement:
    """Positions and attention graph of ``layout`` where chunk i's sources are ``sources[i]`` (indices of
    earlier chunks, see ``topological_order``; None: no chunk has any).

    A chunk without sources starts right after the template prefix (position p) and sees only the prefix
    and itself; a target starts where its furthest-reaching source ends and sees the prefix, its sources
    and itself. The question starts after the furthest-reaching chunk and sees everything. Without edges
    this is the parallel layout. Computed tokens outside the chunks attend to chunk tokens with
    ``temperature`` and ``scale`` (APE; 1 and 1: plainly)."""
    p = layout.prefix.end
    n = len(layout.chunks)
    srcs = sources if sources is not None else [[] for _ in layout.chunks]
    positions = torch.arange(layout.length)
    groups = torch.zeros(layout.length, dtype=torch.long)
    context = torch.zeros(layout.length, dtype=torch.bool)
    sees = torch.eye(n + 2, dtype=torch.bool)
    sees[:, 0] = True  # everyone sees the shared prefix
    sees[n + 1] = True  # the question sees every chunk
    ends = []
    for i, span in enumerate(layout.chunks):
        if any(s >= i for s in srcs[i]):
            raise ValueError("a chunk's sources must come before it in the prompt")
        start = max((ends[s] for s in srcs[i]), default=p)
        positions[span.start:span.end] = torch.arange(start, start + len(span))
        ends.append(start + len(span))
        groups[span.start:span.end] = i + 1
        context[span.start:span.end] = True
        for s in srcs[i]:
            sees[i + 1, s + 1] = True
    q = layout.question
    start = max(ends, default=p)
    positions[q.start:q.end] = torch.arange(start, start + len(q))
    groups[q.start:q.end] = n + 1
    tempered = temperature != 1.0 or scale != 1.0
    return Placement(positions, groups, sees, context if tempered else None, temperature, scale)


def parallel_identities(layout: Layout) -> list[Identity]:
    """Every chunk of a parallel layout sits exactly as when it was isolated: its isolated record, exact.
    Not so without the template prefix (a plain prompt, engine/plain.py: its layout starts with no prefix
    span): records are computed after the template, so nothing there may be captured as isolated."""
    if not len(layout.prefix):
        return [None for _ in layout.chunks]
    return [([], True) for _ in layout.chunks]


def canonical_order(chunk_ids: list[str]) -> list[int]:
    """Chunk indices sorted by chunk id (stable): the same prompt whatever order retrieval returned."""
    return sorted(range(len(chunk_ids)), key=lambda i: chunk_ids[i])


def topological_order(chunk_ids: list[str], edges: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
    """(order, kept edges): chunk indices with every source before its targets, ties by chunk id, and the
    edges that order keeps (in the caller's indices). A cycle is broken where it is met: the smallest
    remaining chunk (by id) is placed next and its edges from chunks not yet placed are dropped."""
    n = len(chunk_ids)
    for s, t in edges:
        if not (0 <= s < n and 0 <= t < n):
            raise ValueError(f"edge ({s}, {t}) names a chunk outside 0..{n - 1}")
    pending = {(s, t) for s, t in edges if s != t}
    placed: list[int] = []
    left = set(range(n))
    while left:
        ready = [i for i in left if not any(t == i and s in left for s, t in pending)]
        nxt = min(ready or left, key=lambda i: (chunk_ids[i], i))
        placed.append(nxt)
        left.discard(nxt)
        pending = {(s, t) for s, t in pending if not (t == nxt and s in left)}
    return placed, sorted(pending)
