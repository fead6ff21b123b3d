"""``focus``: question-focused repair — spend the recompute budget on the context tokens the question reads.

Why. Reuse loses answers because a chunk cached alone never attended to the chunks now before it, and the
repair budget is small. CacheBlend (arXiv 2405.16444) spends it on the tokens whose K/V deviate most from a
fresh computation at layer 1; EPIC (arXiv 2410.15332) on chunk starts; Cache-Craft (arXiv 2502.15734) on
tokens with the most attention outside their chunk. None of them asks what the *question* needs, so
globally salient but irrelevant tokens (chunk headers, punctuation, attention sinks) crowd out the few
tokens the answer depends on — ProphetKV's "crowding-out effect" (arXiv 2602.02579). On our evaluation
model a pilot confirmed it: recomputing only the gold passage fixed 3 of 4 needle questions that naive
reuse missed; recomputing distractors fixed 2 of 4.

What. Two passes (ProphetKV's dual stage; QCFuse, arXiv 2606.05875, scores at critical middle layers):

1. Probe (engine/probe.py): run only the question over the reused, position-corrected chunk KV and take,
   for each context token j, its question attention
       s(j) = mean_{l ∈ Λ} mean_{h, i ∈ R} softmax_j(q_{l,h,i} · k_{l,h,j} / √d)
   over the layers Λ = {⌊f·n_layers⌋, ..., n_layers − 1} (default f = 0: every layer, as ProphetKV's
   re-implementations do) and the rows R: by default only the prompt's last token (``rows=last``), the
   row that produces the first answer token; ``rows=all`` averages every question row. On the evaluation
   model (Qwen2.5-Coder-1.5B, needle pilot) the question text's rows spread their attention over every
   passage that shares the question's words — the distractors — while the last row reads the passage
   that answers; with all rows the gold passage's tokens lost the budget on half the failures.
2. Repair: recompute, at every layer, the global top ⌈ratio · N⌉ context tokens by s (N = tokens of the
   chunks whose record is not exact), plus the question and any chunk without a record. A chunk whose
   record was computed after exactly the chunks that now precede it is already right and never selected.

``unit=chunk`` spends the budget on whole chunks first, by the question's total attention to each, while
they fit, and the remainder on tokens as above: a recomputed chunk regains all of its attention to the
chunks before it, not only at its salient tokens (the needle pilot's gold-passage oracle).

One global top-k rather than a per-chunk quota: the question's attention concentrates on the passages
that hold the answer, and that is where the budget must go. Deterministic: ties break by position.

Measured since (2026-12-05, ``scripts/needle_gold_oracle.py``, docs/benchmarks.md): on the needle set the
probe ranks the passage that holds the answer first in only 9–12 of 30 questions, whichever rows, layers or
aggregate; it reads the stale states that confuse the answer. ``relevance`` ranks chunks without the cache and
replaced ``focus`` as the default (needle 0.88 against 0.40); ``focus`` stays ahead on the MuSiQue sample.

Cost: the probe's |question| tokens through every layer (1–2% of the context's work for RAG prompts) plus
the plan's ratio·N tokens; the recompute fraction reported counts the plan only.
"""

from __future__ import annotations

import math

import torch

from chunkcache.kv.record import ChunkRecord
from chunkcache.strategies.base import Plan, Request, Strategy, stale_chunks


class Focus(Strategy):
    name = "focus"
    budget_param = "ratio"

    def __init__(self, ratio: float = 0.15, from_layer: float = 0.0, rows: str = "last", unit: str = "token") -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError("focus's ratio must be in [0, 1]")
        if not 0.0 <= from_layer < 1.0:
            raise ValueError("focus's from_layer must be in [0, 1)")
        if rows not in ("last", "all"):
            raise ValueError("focus's rows must be 'last' or 'all'")
        if unit not in ("token", "chunk"):
            raise ValueError("focus's unit must be 'token' or 'chunk'")
        self.ratio, self.from_layer, self.rows, self.unit = ratio, from_layer, rows, unit
        self.expected_recompute = ratio

    def probe_layers(self, n_layers: int) -> list[int]:
        return list(range(int(self.from_layer * n_layers), n_layers))

    def select(self, req: Request, records: list[ChunkRecord | None], must: torch.Tensor) -> Plan:
        layout = req.layout
        stale = [layout.chunks[i].range() for i in stale_chunks(req, records)]
        if not stale or self.ratio == 0.0:
            return Plan(must)
        candidates = torch.cat(stale)
        budget = math.ceil(self.ratio * candidates.numel() - 1e-9)
        if req.probe is None:
            raise ValueError("focus needs the engine's question probe (Request.probe)")
        scores = req.probe(records, self.probe_layers(req.n_layers), self.rows == "last")
        picked = _whole_chunks(stale, scores, budget) if self.unit == "chunk" else []
        rest = top_tokens(scores, candidates, picked, budget - sum(p.numel() for p in picked))
        return Plan(torch.cat([must, *picked, rest]))


def top_tokens(scores: torch.Tensor, candidates: torch.Tensor, picked: list[torch.Tensor], n: int) -> torch.Tensor:
    """The ``n`` ``candidates`` with the highest ``scores`` that are not already ``picked``, ties by position."""
    rest = candidates[~torch.isin(candidates, torch.cat(picked))] if picked else candidates
    return rest[torch.argsort(-scores[rest], stable=True)[:n]]


def _whole_chunks(stale: list[torch.Tensor], scores: torch.Tensor, budget: int) -> list[torch.Tensor]:
    """``unit=chunk``: whole stale chunks, by the question's total attention to them, while they fit the
    budget (a recomputed chunk gets all of its cross-chunk attention back, not only its salient tokens)."""
    mass = torch.stack([scores[s].sum() for s in stale])
    picked, used = [], 0
    for i in torch.argsort(-mass, stable=True).tolist():
        if used + stale[i].numel() <= budget:
            picked.append(stale[i])
            used += stale[i].numel()
    return picked
