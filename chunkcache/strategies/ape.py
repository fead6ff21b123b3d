"""``ape``: Adaptive Parallel Encoding (Yang, Chen, Chen, "APE: Faster and Longer Context-Augmented
Generation via Adaptive Parallel Encoding", ICLR 2025, arXiv 2502.05431, section 4 and appendix C).

Parallel encoding: every context chunk is encoded alone after a shared prefix, so all chunks occupy the
same position range right after it; the query follows the longest chunk. Chunk KV is reused as is (no
token of any cached chunk is recomputed); only the question is computed. APE's three steps:

1. shared prefix (section 4.1): one prefix before all contexts, so the attention-sink states appear once;
2. attention temperature T < 1 (section 4.2) on the query's attention to context tokens, re-sharpening a
   distribution that duplicated neighbouring positions flattened;
3. scaling factor S < 1 (section 4.3) on the context's LogSumExp, undoing the change of the context's
   total weight that the temperature caused.

With s_j = q·k_j·scale (the model's own attention scale), C the context (chunk) keys and N the other keys
a computed query sees (shared prefix, question, generated tokens), appendix C.4 computes attention over C
with temperature T and over N plainly, then merges the two with softmax([S·T·LSE_C, LSE_N]):

    Z_C = Σ_{j∈C} exp(s_j / T),   Z_N = Σ_{j∈N} exp(s_j)
    a_j = exp(s_j / T) · Z_C^(S·T − 1) / (Z_C^(S·T) + Z_N)      j ∈ C
    a_j = exp(s_j)                     / (Z_C^(S·T) + Z_N)      j ∈ N

(equation 5; the paper multiplies the LSE by S·T rather than S "to simplify the search", as the authors'
code does, so S here is the authors' ``scale``). T = S = 1 is plain attention. The equation's typeset form
is an image in the text we could read; the formula above is taken from appendix C.4's pseudo-code and the
authors' implementation, which agree. Defaults T = S = 0.9 are the defaults of the authors' repository
(github.com/Infini-AI-Lab/APE); the paper tunes both per task by grid search over [0.1, 1.0].

Where ours deviates:

* The shared prefix is our template prefix (chat header + instruction), after which our isolated records
  were computed: the paper's prefix is a model/task system prompt or a few "\\n". Records are used as is.
* The question tokens attend to each other and to the prefix plainly, and to every chunk with T and S,
  at every layer, as in the paper — but only in this prefill: decode (engine/decode.py) continues at the
  RoPE position right after the placed question (``PrefillResult.next_position``) with plain attention,
  whereas the paper also tempers generated tokens' attention. First-token fidelity is unaffected.
* A chunk with no isolated record is computed in the request (DESIGN section 3's fallback), seeing only
  the shared prefix and itself at the parallel positions, so it gets exactly the states its isolated
  record would hold. Variants captured after other chunks are not used: parallel encoding needs states
  that never saw another context.
"""

from __future__ import annotations

import torch

from chunkcache.kv.record import ISOLATED, ChunkRecord
from chunkcache.strategies.base import Plan, Request, Strategy
from chunkcache.strategies.layouts import PlacedPlan, graph_placement, parallel_identities


class APE(Strategy):
    name = "ape"
    expected_recompute = 0.0

    def __init__(self, T: float = 0.9, S: float = 0.9) -> None:
        if T <= 0 or S <= 0:
            raise ValueError("ape's T and S must be > 0")
        self.T, self.S = T, S

    def wanted_variants(self, stored: list[str], in_place: str) -> list[str]:
        return [ISOLATED] if ISOLATED in stored else []

    def choose_variants(self, req: Request) -> list[ChunkRecord | None]:
        """Per chunk its isolated record (computed right after the template prefix), else None."""
        return [next((c for c in cands if not c.prefix_ids), None) for cands in req.candidates]

    def select(self, req: Request, records: list[ChunkRecord | None], must: torch.Tensor) -> Plan:
        return PlacedPlan(must, graph_placement(req.layout, None, self.T, self.S), parallel_identities(req.layout))
