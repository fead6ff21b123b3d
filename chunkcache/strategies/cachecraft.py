"""``cachecraft``: Cache-Craft (Agarwal et al., "Cache-Craft: Managing Chunk-Caches for Efficient
Retrieval-Augmented Generation", arXiv 2502.15734, section 4). Notation of DESIGN section 3.

For chunk C_i with a stored variant computed after chunks S_old, placed now after chunks S_new:

* CCI = sigmoid(ā / b̄)                                   context impact (``ChunkRecord.cci``)
* β   = Σ_{j∈S_old∩S_new} inter(C_i,C_j) / Σ_{j∈S_old} inter(C_i,C_j)    prefix overlap
* γ   = normalised Kendall-tau distance of the common chunks' orders        order penalty
* CFO = clamp(α · CCI · (1 − β(1 − γ)), 0, 1)                               cache fix overhead

and ⌈CFO·|C_i|⌉ of the chunk's tokens — those with the highest attention to outside context — are
recomputed at every layer. Among a chunk's variants the one with the lowest CFO is used; an exact variant
(``ChunkRecord.exact``) computed after exactly S_new has CFO 0. A variant that is not exact — captured from a
request that recomputed only part of it or of what precedes it — gets no credit for prefix overlap (β = 0):
its states were computed over stale ones, so sharing S_old with S_new does not make them right. The
paper's β assumes a variant's states are those of its prefix; this keeps that assumption true.

Isolated records (precomputed at ingest, S_old = ∅) have no preceding chunks, so β = 0 and their CCI and
per-token outside attention are measured against the template prefix (attention-sink token excluded): a
chunk whose tokens look outside themselves in isolation is one whose states depend on whatever precedes
it. Variants captured from served requests carry the real inter-chunk statistics.
"""

from __future__ import annotations

import math

import torch

from chunkcache.kv.record import ChunkRecord
from chunkcache.strategies.base import Plan, Request, Strategy


def kendall_tau_distance(a: list[str], b: list[str]) -> float:
    """Fraction of discordant pairs between two orders of the same items (0: same order, 1: reversed)."""
    pos = {x: i for i, x in enumerate(b)}
    n = len(a)
    if n < 2:
        return 0.0
    discordant = sum(1 for i in range(n) for j in range(i + 1, n) if pos[a[i]] > pos[a[j]])
    return discordant / (n * (n - 1) / 2)


def cfo(record: ChunkRecord, s_new: list[str], alpha: float) -> float:
    """Cache Fix Overhead of using ``record`` after the chunks ``s_new`` (module docstring)."""
    if record.exact and record.prefix_ids == s_new:
        return 0.0
    s_old = record.prefix_ids
    beta, gamma = 0.0, 0.0
    if s_old and record.exact and record.inter is not None:
        mass = record.inter.float().mean(dim=0)[1:]  # per preceding chunk, averaged over layers
        new = set(s_new)
        common = [j for j in s_old if j in new]
        total = float(mass.sum())
        if total > 0:
            beta = float(sum(mass[idx] for idx, j in enumerate(s_old) if j in new)) / total
        gamma = kendall_tau_distance(common, [j for j in s_new if j in set(common)])
    return min(1.0, max(0.0, alpha * record.cci() * (1.0 - beta * (1.0 - gamma))))


def fix_tokens(record: ChunkRecord, fraction: float) -> torch.Tensor:
    """Offsets (within the chunk) of the ⌈fraction·|C|⌉ tokens with the most attention to outside context."""
    n = record.n_tokens
    count = min(n, math.ceil(fraction * n - 1e-9))
    if count <= 0:
        return torch.empty(0, dtype=torch.long)
    if record.outside is None:
        return torch.arange(count)  # no statistics: the leading tokens (EPIC's choice)
    order = torch.argsort(-record.outside.float(), stable=True)
    return torch.sort(order[:count]).values


class CraftPlan(Plan):
    """A static plan that also says each chunk's CFO (what the request decided, kept with the request)."""

    def __init__(self, initial: torch.Tensor, cfo: list[float]) -> None:
        super().__init__(initial)
        self.cfo = cfo


class CacheCraft(Strategy):
    name = "cachecraft"
    uses_record_stats = True
    budget_param = "alpha"

    def __init__(self, alpha: float = 0.3) -> None:
        if alpha < 0:
            raise ValueError("cachecraft's alpha must be >= 0")
        self.alpha = alpha

    def wanted_variants(self, stored: list[str], in_place: str) -> list[str]:
        """Every variant: the one of lowest CFO depends on each variant's statistics (section 4.3)."""
        return stored

    def choose_variants(self, req: Request) -> list[ChunkRecord | None]:
        chosen = []
        for i, cands in enumerate(req.candidates):
            s_new = req.chunk_prefix_ids(i)
            scored = sorted(((cfo(c, s_new, self.alpha), k) for k, c in enumerate(cands)))
            chosen.append(cands[scored[0][1]] if scored else None)
        return chosen

    def select(self, req: Request, records: list[ChunkRecord | None], must: torch.Tensor) -> Plan:
        """The plan; its ``cfo`` attribute lists each chunk's CFO (1 for a chunk without a record), per
        request, so one strategy object can serve concurrent requests."""
        parts = [must]
        fractions = []
        for i, (span, rec) in enumerate(zip(req.layout.chunks, records)):
            if rec is None:
                fractions.append(1.0)
                continue
            f = cfo(rec, req.chunk_prefix_ids(i), self.alpha)
            fractions.append(f)
            parts.append(span.start + fix_tokens(rec, f))
        return CraftPlan(torch.cat(parts), fractions)
