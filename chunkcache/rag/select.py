"""Cache-aware chunk selection under a prefill-cost budget (after "CORAG: A Cost-Constrained
Retrieval Optimization System for Retrieval-Augmented Generation", arXiv 2411.00744).

CORAG's observations: the utility of a set of chunks is not the sum of its parts (redundant chunks add
little) and is not monotonic in their number (a weakly related chunk can lower answer quality), so the
set should be searched under a cost budget rather than cut at a fixed top-k. Its search is Monte Carlo
tree search over chunk combinations. Ours is a greedy search over the
retriever's candidates with an explicit utility, because the cost term is what chunk reuse changes:

    cost(i)  = n_i · (r_i if chunk i has a cached record else 1)            computed prefill tokens
    dup(i, S)   = max_{j∈S} max(0, cos(v_i, v_j) − θ) / (1 − θ)               near-duplicate share
    gain(i | S) = rel_i · (1 − λ · dup(i, S)) − τ · rel_max                  utility of adding i to S

``n_i`` is the chunk's token count and ``r_i`` the fraction a reuse strategy recomputes of a cached chunk
(store/eviction's ``DEFAULT_RECOMPUTE`` unless observed), so a hot chunk costs a small fraction of a cold
one. ``rel`` is the retriever's cosine similarity, ``v`` the chunks' embeddings (redundancy, as in MMR,
but only above similarity θ: chunks on one topic are what a multi-hop question needs, copies are not),
λ the redundancy weight and τ the relevance floor relative to the best candidate below which a chunk's
utility is negative (CORAG's non-monotonicity). Greedy picks, among chunks with positive gain that fit
the remaining budget, the best gain per cost (cost plus the question's tokens, so a free chunk is not
infinitely attractive), until none is left; as in the classic budgeted-greedy bound it then compares the
set with the best single chunk that fits and keeps the better. With no budget nothing changes: callers
keep plain top-k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REDUNDANCY = 0.5  # λ
DUPLICATE = 0.8  # θ: cosine similarity from which two chunks start to count as copies
RELEVANCE_FLOOR = 0.75  # τ, relative to the best candidate's relevance


@dataclass(frozen=True)
class Candidate:
    """One retrieved chunk as the selector sees it."""

    relevance: float
    tokens: int
    cached: bool
    recompute: float  # fraction recomputed when cached
    vector: np.ndarray | None = None  # unit-length embedding; None: no redundancy term

    @property
    def cost(self) -> float:
        return self.tokens * (self.recompute if self.cached else 1.0)


def _gain(c: Candidate, chosen: list[Candidate], best: float, redundancy: float, floor: float) -> float:
    cos = max((float(np.dot(c.vector, o.vector)) for o in chosen
               if c.vector is not None and o.vector is not None), default=0.0)
    return c.relevance * (1.0 - redundancy * max(0.0, cos - DUPLICATE) / (1.0 - DUPLICATE)) - floor * best


def select_chunks(cands: list[Candidate], budget_tokens: float, question_tokens: int = 0,
                  redundancy: float = REDUNDANCY, floor: float = RELEVANCE_FLOOR) -> list[int]:
    """Indices of the chosen candidates, most relevant first, whose total cost (computed tokens, the
    question's ``question_tokens`` included) stays within ``budget_tokens``; see the module docstring.
    When not even one chunk fits, the cheapest of the most relevant is returned alone, so a question is
    never answered without context (the caller reports the overrun)."""
    if not cands:
        return []
    if budget_tokens <= 0:
        raise ValueError(f"the budget must be positive, got {budget_tokens}")
    best = max(c.relevance for c in cands)
    left = budget_tokens - question_tokens
    chosen: list[int] = []
    total = 0.0
    while True:
        options = []
        for i, c in enumerate(cands):
            if i in chosen or c.cost > left:
                continue
            g = _gain(c, [cands[j] for j in chosen], best, redundancy, floor)
            if g > 0:
                options.append((g / (c.cost + question_tokens + 1), g, -i))
        if not options:
            break
        _, g, neg = max(options)
        chosen.append(-neg)
        left -= cands[-neg].cost
        total += g
    single = [(_gain(c, [], best, redundancy, floor), -i) for i, c in enumerate(cands)
              if c.cost <= budget_tokens - question_tokens]
    if single and max(single)[0] > total:
        chosen = [-max(single)[1]]
    if not chosen:
        top = [i for i, c in enumerate(cands) if c.relevance >= best - 1e-9]
        chosen = [min(top, key=lambda i: cands[i].cost)]
    return sorted(chosen, key=lambda i: (-cands[i].relevance, i))
