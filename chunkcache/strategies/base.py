"""The one interface every reuse strategy implements (DESIGN section 3).

A strategy sees the request's layout and, per chunk, the stored variants of its record; it picks one
variant per chunk and returns a ``Plan``: which positions to compute at which layers. All strategies run
through the same executor (engine/executor.py). Selections are deterministic (ties broken by position)
and every plan reports what it recomputes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch

from chunkcache.engine.prompt import Layout
from chunkcache.kv.record import ISOLATED, ChunkRecord


class Plan:
    """Positions to compute per layer. The static form computes ``initial`` at every layer; subclasses may
    shrink the set after observing a layer's fresh vs cached K/V (CacheBlend)."""

    def __init__(self, initial: torch.Tensor) -> None:
        self.initial = torch.unique(initial.long())  # sorted, deduplicated

    def computed_throughout(self) -> torch.Tensor:
        """Positions computed at every layer. Sets only shrink with depth, so this is the last layer's set;
        a static plan computes ``initial`` everywhere. Plans that shrink override this; after the prefill
        has run it is what exactness is judged from (``Decision.exact_chunks``)."""
        return self.initial

    def wants_observation(self, layer: int) -> bool:
        """Whether ``next_positions`` needs the cached K/V of this layer's computed positions."""
        return False

    def next_positions(self, layer: int, positions: torch.Tensor,
                       fresh: tuple[torch.Tensor, torch.Tensor],
                       cached: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Positions for layer + 1 (a subset of ``positions``). Returning ``positions`` keeps them."""
        return positions

    @staticmethod
    def validate(positions: torch.Tensor, length: int, within: torch.Tensor | None = None) -> None:
        if positions.numel() == 0 or int(positions[-1]) != length - 1:
            raise ValueError("a plan must compute the last prompt token at every layer")
        if int(positions[0]) < 0 or int(positions[-1]) >= length:
            raise ValueError("plan positions fall outside the prompt")
        if within is not None and not bool(torch.isin(positions, within).all()):
            raise ValueError("plan positions may only shrink with depth")


@dataclass
class Request:
    """What a strategy decides from: the layout and, per chunk, its available variants (may be empty)."""

    layout: Layout
    candidates: list[list[ChunkRecord]]
    n_layers: int
    # The engine's question probe (engine/probe.py): given the chosen records, the layers and whether to
    # read only the last prompt row, the question's attention to every prompt position [L]. None where no
    # model is at hand.
    probe: Callable[[list[ChunkRecord | None], list[int], bool], torch.Tensor] | None = None
    # The assembled prompt's token ids [L] (what strategies that read the text, such as relevance, score).
    ids: torch.Tensor | None = None

    def chunk_prefix_ids(self, i: int) -> list[str]:
        return self.layout.chunk_ids[:i]


@dataclass
class Decision:
    records: list[ChunkRecord | None]  # the variant used for each chunk (None: computed from scratch)
    plan: Plan

    def exact_chunks(self, req: Request) -> list[bool]:
        """Per chunk, whether its states in this request are exact once the plan has run: the chunk and
        every chunk before it were either computed at every layer or reused from a record that is exact in
        that place (``is_exact``). By causality, tokens computed at every layer over exact states get
        exact states themselves; one stale chunk makes everything after it inexact."""
        kept = self.plan.computed_throughout().cpu()
        out, ok = [], True
        for i, (span, rec) in enumerate(zip(req.layout.chunks, self.records)):
            ok = ok and (is_exact(req, i, rec) or bool(torch.isin(span.range(), kept).all()))
            out.append(ok)
        return out

    def identities(self, req: Request) -> list[tuple[list[str], bool]]:
        """Per chunk, the variant its states in this request would be captured as: (prefix ids, exact), or
        None where they may not be captured. A sequential prompt's chunk i is the variant after the chunks
        before it, exact as ``exact_chunks`` says; a placed plan (strategies/layouts.py) says its own."""
        own = getattr(self.plan, "identities", None)
        if own is not None:
            return own
        return [(req.chunk_prefix_ids(i), e) for i, e in enumerate(self.exact_chunks(req))]


class Strategy(ABC):
    """Base class: subclasses set ``name`` and implement ``select`` (and may override ``choose_variants``)."""

    name: str = ""
    # The constructor parameter that sets how much is recomputed (what ``chunkcache calibrate`` tunes);
    # None for strategies with a fixed budget.
    budget_param: str | None = None
    # Whether records this strategy captures should carry Cache-Craft's attention statistics (an explicit
    # softmax over the computed rows at every layer, which costs more than the prefill at a few thousand
    # tokens on a GPU); only strategies that read them ask for it.
    uses_record_stats: bool = False
    # The fraction of a cached chunk this strategy is expected to recompute: what reusing a cached chunk
    # costs when chunks are chosen under a budget (rag/select.py). Strategies with a budget parameter
    # report it; those that never repair say 0; the rest assume the default strategy's 15%.
    expected_recompute: float = 0.15

    def arrange(self, chunk_ids: list[str], edges: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
        """(order, edges): the order the chunks take in the prompt (indices into ``chunk_ids``) and the
        (source, target) edges the strategy honours, in the caller's indices. By default the caller's
        order and no edges; layouts that are order-invariant or structured override it."""
        return list(range(len(chunk_ids))), []

    def in_place_variants(self, layout: Layout) -> list[str] | None:
        """Per chunk, the name of the variant that would be exact where it sits in ``layout``; None: the one
        computed after exactly the chunks before it (a sequential prompt)."""
        return None

    def wanted_variants(self, stored: list[str], in_place: str) -> list[str]:
        """Which of a chunk's ``stored`` variant names to load, decided from names alone before any record
        is read: ``in_place`` is the name of the variant computed after exactly the chunks that precede it
        now. By default only the variant ``choose_variants`` would pick; strategies that compare variants'
        contents (Cache-Craft's CFO) load them all."""
        if in_place in stored:
            return [in_place]
        return [ISOLATED] if ISOLATED in stored else stored[:1]

    def choose_variants(self, req: Request) -> list[ChunkRecord | None]:
        """Per chunk: the variant computed after exactly the chunks that precede it now, else the isolated
        one, else any; None when the chunk has no record."""
        chosen: list[ChunkRecord | None] = []
        for i, cands in enumerate(req.candidates):
            exact = [c for c in cands if c.prefix_ids == req.chunk_prefix_ids(i)]
            isolated = [c for c in cands if not c.prefix_ids]
            chosen.append((exact or isolated or cands or [None])[0])
        return chosen

    def decide(self, req: Request) -> Decision:
        records = self.choose_variants(req)
        layout = req.layout
        must = [layout.question.range()]
        for span, rec in zip(layout.chunks, records):
            if rec is None:  # missing or unreadable cache: this chunk falls back to `full`
                must.append(span.range())
        return Decision(records, self.select(req, records, torch.cat(must)))

    @abstractmethod
    def select(self, req: Request, records: list[ChunkRecord | None], must: torch.Tensor) -> Plan:
        """The plan, given the chosen records and the positions that must be computed regardless."""


def is_exact(req: Request, i: int, rec: ChunkRecord | None) -> bool:
    """Whether chunk i can reuse ``rec`` as is: the record is exact (``ChunkRecord.exact``: computed in full
    over exact states) and was computed after exactly the chunks that now precede it."""
    return rec is not None and bool(rec.exact) and rec.prefix_ids == req.chunk_prefix_ids(i)


def stale_chunks(req: Request, records: list[ChunkRecord | None]) -> list[int]:
    """Indices of the chunks a repair may touch: reused from a record that is not exact in place."""
    return [i for i, rec in enumerate(records) if rec is not None and not is_exact(req, i, rec)]
