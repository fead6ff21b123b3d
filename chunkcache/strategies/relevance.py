"""``relevance``: recompute in full the chunks most relevant to the question, ranked without the stale cache.

Why. A reused chunk was computed without the chunks now before it, and on the evaluation model
(Qwen2.5-Coder-1.5B) that costs answers: on the needle set `naive` answers 26% of the questions `full`
answers 94% of (50 questions). A diagnostic over the first 30 (``scripts/needle_gold_oracle.py``,
2026-12-05, docs/benchmarks.md) says where the repair budget must go and how to find it:

1. Recomputing exactly the passage that holds the answer, in full (16.7% of the context on average),
   answers 27 of 30. A chunk recomputed whole gets all of its attention to the chunks before it back, which
   token-level repair over stale neighbours does not: CacheBlend, Cache-Craft and ``focus`` at 13–42%
   recompute answered 38–75% of the first 16.
2. Ranking the passages by the question's attention over the reused cache — the signal of ``focus``,
   ProphetKV (arXiv 2602.02579) and QCFuse (arXiv 2606.05875) — puts that passage first in 9–12 of 30,
   whichever rows, layers or aggregate are used: the probe reads the same stale states that confuse the
   answer, so it inherits their confusion. Word overlap with the question put it first in 30 of 30, and
   BM25 on token ids (below) in 47 of all 50.

What. Score each chunk by Okapi BM25 (Robertson and Zaragoza, "The Probabilistic Relevance Framework: BM25
and Beyond", 2009, eq. 3.15) of the question's tokens over the request's own chunks, on token ids, so the
scoring needs no tokenizer, no extra model and no pass over the model:

    score(c) = Σ_{t ∈ q} w(t) · IDF(t) · f(t, c) · (k1 + 1) / (f(t, c) + k1 · (1 − b + b · |c| / avgdl))
    IDF(t)   = ln(1 + (N − n(t) + 0.5) / (n(t) + 0.5))
    w(t)     = ln(2 + t)

with f(t, c) the count of token t in chunk c, N the request's chunks, n(t) how many of them hold t, avgdl
their mean length, k1 = 1.2 and b = 0.75. Tokens every chunk shares (" the", punctuation, a repeated
header) get an IDF near 0, so the names and numbers only some chunks hold decide the ranking — the role a
retriever's relevance score plays, computed here from the prompt alone (plain chat prompts carry no scores).

IDF over a handful of chunks is a poor estimate of how rare a token is: among six passages " of" held by two
weighs as much as " red" held by two. The corpus statistics a retriever would use are baked into the
tokenizer: a BPE vocabulary (Sennrich et al., ACL 2016) numbers its tokens in the order their merges were
learned, most frequent first, so a token's id approximates its frequency rank r, and under Zipf's law
(p ∝ 1/r) its self-information −ln p is ln r plus a constant. w(t) is that prior (ln(2 + id), positive for
every id). Measured by ``scripts/relevance_ranking.py`` (2026-12-07, results/relevance_ranking.json): with
Qwen2.5-Coder-1.5B's tokenizer the answer's passage ranks first in 50 of 50 needle questions with w against
47 without (the misses were "code of the red river" outranking "red anchor: code 7422" for "the code of
the red anchor"), and in 15 of the 35 MuSiQue questions whose answer string occurs in a passage against 13;
with SmolLM2's and Gemma 3's, 49 against 47 on needle and 15 against 14, 13 against 13 on MuSiQue. A
vocabulary not in frequency order would make w noise; over the passages of both sets, id and frequency rank
correlate (Spearman) 0.42, 0.44 and 0.40 for the three.

Then walk the stale chunks (reused and not exact in place) from the most relevant down and recompute each
in full at every layer while the total stays within the budget β = ⌈ratio · N_stale⌉ tokens. A chunk is the
unit of repair, so the budget is rounded to whole chunks: the most relevant chunk is taken whole if it costs
at most 2β (the reported recompute fraction shows the overshoot); a larger one gets only its first β tokens,
which, recomputed in order, see the chunks before them as a whole chunk would. After it, chunks are taken
only while they fit. The walk stops at the first chunk that does not fit rather than skipping to smaller,
less relevant ones, and chunks that share no scored token with the question (score 0) are never chosen.
The question and chunks without a record are computed as always.

``rest=probe`` (the default) spends what the whole chunks leave of the budget on single tokens, as ``focus``
does: the stale tokens the prompt's last row attends to most in a probe over the repaired-to-be context. On a
multi-hop question the passage that holds the answer is reached through a bridge entity the question does
not name, which BM25 cannot find but the question's attention may. Measured on MuSiQue (Qwen2.5-Coder-1.5B,
first 21 questions, 2026-12-07, docs/benchmarks.md): ``rest=none`` answers no better than ``naive`` (F1 0.150
against 0.157; a passage is a tenth of the context, so one fits in the budget), the hybrid at ratio 0.2 gets
F1 0.212 at 18% recompute, level with ``focus`` (0.223; paired difference −0.01 [−0.04, +0.02]); on needle it
keeps whole-passage repair's accuracy (same doc). ``ratio`` 0.2 is the issue's recompute bar; the top chunk's
overshoot (up to 2β) is the exception the reported recompute fraction shows.

The probe costs about one ``naive`` pass (below), so it runs only when whole chunks leave at least
``min_rest`` (default a quarter) of the budget. Measured (Qwen2.5-Coder-1.5B, 2026-12-07): on needle the top
passage leaves less than that in 42 of 50 questions (Qwen's tokenizer), and spending the rest on probed tokens
changed none of the 50 answers while nearly doubling TTFT on the CPU (1855 against 961 ms); on MuSiQue it
leaves 42–49% in each of the first 21, and spending that is what lifts F1 from 0.150 to 0.212.

Where it loses: the needle questions name their object, the case lexical relevance is made for; a
question worded differently from its passage (paraphrase, synonyms) ranks worse, as BM25 retrieval does, and
one that shares no words with the chunk it needs gets only the probe's token-level repair there. What it
costs: the probe, a pass of the question over every layer with an explicit softmax, which made ``focus``
slower than ``full`` on the H100 at 2K-token prompts. ``rest=none`` never runs it.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from chunkcache.kv.record import ChunkRecord
from chunkcache.strategies.base import Plan, Request, Strategy, stale_chunks
from chunkcache.strategies.focus import top_tokens

K1, B = 1.2, 0.75


def bm25(query: list[int], docs: list[list[int]], prior: bool = True) -> list[float]:
    """Okapi BM25 of ``query`` (token ids) against each of ``docs``, IDF over ``docs``, each token weighted by
    its vocabulary-rank prior ln(2 + id) (module docstring; ``prior=False``: plain BM25, for comparison)."""
    if not docs:
        return []
    counts = [Counter(d) for d in docs]
    n = len(docs)
    avgdl = sum(map(len, docs)) / n or 1.0
    held = Counter(t for c in counts for t in c)
    weight = {t: (math.log(2 + t) if prior else 1.0) * math.log1p((n - held[t] + 0.5) / (held[t] + 0.5))
              for t in set(query) if held[t]}  # w(t) · IDF(t), once per query token
    scores = []
    for doc, c in zip(docs, counts):
        norm = K1 * (1 - B + B * len(doc) / avgdl)
        scores.append(sum(w * c[t] * (K1 + 1) / (c[t] + norm) for t, w in weight.items() if c[t]))
    return scores


class Relevance(Strategy):
    name = "relevance"
    budget_param = "ratio"

    def __init__(self, ratio: float = 0.2, rest: str = "probe", min_rest: float = 0.25) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError("relevance's ratio must be in [0, 1]")
        if rest not in ("none", "probe"):
            raise ValueError("relevance's rest must be 'none' or 'probe'")
        if not 0.0 <= min_rest <= 1.0:
            raise ValueError("relevance's min_rest must be in [0, 1]")
        self.ratio, self.rest, self.min_rest = ratio, rest, min_rest
        self.expected_recompute = ratio

    def select(self, req: Request, records: list[ChunkRecord | None], must: torch.Tensor) -> Plan:
        layout = req.layout
        stale = stale_chunks(req, records)
        if not stale or self.ratio == 0.0:
            return Plan(must)
        if req.ids is None:
            raise ValueError("relevance needs the prompt's token ids (Request.ids)")
        ids = req.ids.tolist()
        scores = bm25(ids[layout.question.start:layout.question.end],
                      [ids[span.start:span.end] for span in layout.chunks])
        budget = math.ceil(self.ratio * sum(len(layout.chunks[i]) for i in stale) - 1e-9)
        picked: list[torch.Tensor] = []
        used = 0
        for i in sorted(stale, key=lambda i: (-scores[i], i)):
            span = layout.chunks[i]
            if scores[i] <= 0 or used + len(span) > (budget if picked else 2 * budget):
                if not picked and scores[i] > 0:  # the most relevant chunk, far larger than the budget
                    picked.append(torch.arange(span.start, span.start + budget))
                    used = budget
                break
            picked.append(span.range())
            used += len(span)
        if self.rest == "probe" and used < budget and budget - used >= self.min_rest * budget:
            picked.append(self._probed_tokens(req, records, stale, picked, budget - used))
        return Plan(torch.cat([must, *picked]))

    @staticmethod
    def _probed_tokens(req: Request, records: list[ChunkRecord | None], stale: list[int],
                       picked: list[torch.Tensor], n: int) -> torch.Tensor:
        """``rest=probe``: the ``n`` stale tokens outside the picked chunks that the prompt's last row attends
        to most over every layer (``focus``'s probe, engine/probe.py), ties by position."""
        if req.probe is None:
            raise ValueError("relevance:rest=probe needs the engine's question probe (Request.probe)")
        scores = req.probe(records, list(range(req.n_layers)), True)
        return top_tokens(scores, torch.cat([req.layout.chunks[i].range() for i in stale]), picked, n)
