"""A deterministic RAG request trace for the serving benchmark (DESIGN section 6, synthetic workloads).

Real RAG traffic reuses chunks across requests: popular documents are retrieved again and again, in
whatever order the retriever ranks them that time, with different questions. The trace models that:

- A corpus of *chunk sets*: k passages each, with a few questions that go with them. From MuSiQue
  (``musique_sets``), set i is k passages of example i and its questions are that example's question
  plus templated ones about its passages; from any list of texts (``text_sets``), sets are seeded samples
  and every question is templated.
- Popularity is Zipf over sets: the set of popularity rank r is drawn with probability ∝ 1/r^s, so the
  top sets repeat often (with several questions each) and the tail appears once or never. Ranks are a
  seeded permutation of the sets, so popularity does not follow corpus order.
- Each request shuffles its set's passages, so a repeated chunk lands at a new position after new
  neighbours: exact prefix caching misses what position-independent reuse can still hit.

A request is plain OpenAI chat messages, the passages pasted into the user message as a RAG app would do
it, with no chunkcache-specific markers. Everything is a function of the seed.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

from chunkcache.bench.datasets import load_json, shared_data_dir

INSTRUCTION = "Answer using these passages:"


@dataclass(frozen=True)
class ChunkSet:
    """Passages retrieved together, and the questions asked about them."""

    passages: tuple[str, ...]
    questions: tuple[str, ...]


@dataclass(frozen=True)
class TraceRequest:
    """One request of the trace: which set, its passages in this request's order, and the question."""

    index: int
    set_id: int
    passages: tuple[str, ...]
    question: str

    def content(self) -> str:
        """The user message: instruction, numbered passages, question."""
        body = "\n\n".join(f"[{i}] {p.strip()}" for i, p in enumerate(self.passages, 1))
        return f"{INSTRUCTION}\n\n{body}\n\nQuestion: {self.question}"

    def messages(self) -> list[dict[str, str]]:
        """OpenAI chat messages for this request."""
        return [{"role": "user", "content": self.content()}]


def _topic(passage: str, words: int = 6) -> str:
    """A passage's title if it has one (``Title: ...`` first line), else its first few words."""
    first = passage.strip().splitlines()[0] if passage.strip() else ""
    if first.startswith("Title: ") and len(first) > len("Title: "):
        return first[len("Title: "):]
    return " ".join(passage.split()[:words])


def _templated(passages: tuple[str, ...]) -> list[str]:
    """Questions a user could ask about these passages, one per passage."""
    return [f'What do the passages say about "{_topic(p)}"?' for p in passages]


def musique_sets(k: int = 4, path: Path | None = None, seed: int = 0) -> list[ChunkSet]:
    """One set per MuSiQue example: k of its passages (a seeded sample, kept in the file's order) and its
    questions (the example's own, then templated ones). ``path`` defaults to the shared musique_dev.json."""
    if k < 1:
        raise ValueError("k must be at least 1")
    examples = load_json(path or shared_data_dir() / "musique_dev.json")
    rng = random.Random(seed)
    sets = []
    for ex in examples:
        if len(ex.passages) < k:
            raise ValueError(f"a MuSiQue example has {len(ex.passages)} passages, fewer than k={k}")
        keep = sorted(rng.sample(range(len(ex.passages)), k))
        passages = tuple(ex.passages[i] for i in keep)
        sets.append(ChunkSet(passages, (ex.question, *_templated(passages))))
    return sets


def text_sets(texts: list[str], k: int, n_sets: int, seed: int = 0) -> list[ChunkSet]:
    """``n_sets`` seeded samples of k distinct texts each, with templated questions."""
    texts = [t for t in texts if t.strip()]
    if k < 1 or k > len(texts):
        raise ValueError(f"k must be between 1 and the number of non-empty texts ({len(texts)}), got {k}")
    if n_sets < 1:
        raise ValueError("n_sets must be at least 1")
    rng = random.Random(seed)
    sets = []
    for _ in range(n_sets):
        passages = tuple(rng.sample(texts, k))
        sets.append(ChunkSet(passages, tuple(_templated(passages))))
    return sets


def zipf_weights(n: int, s: float) -> list[float]:
    """Probabilities ∝ 1/r^s for ranks r = 1..n (s = 0: uniform)."""
    if s < 0:
        raise ValueError("the Zipf parameter s must be >= 0")
    raw = [1.0 / r ** s for r in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def make_trace(sets: list[ChunkSet], n: int, s: float = 1.1, seed: int = 0) -> list[TraceRequest]:
    """``n`` requests: a Zipf(s)-popular set each, its passages shuffled, one of its questions.

    Questions of a set are used in turn (a seeded rotation), so a set drawn m times asks min(m, q)
    different questions before any repeats.
    """
    if n < 1:
        raise ValueError("the trace needs at least one request")
    if not sets:
        raise ValueError("no chunk sets to draw from")
    rng = random.Random(seed)
    ranked = list(range(len(sets)))
    rng.shuffle(ranked)  # ranked[r] is the set with popularity rank r + 1
    draws = rng.choices(ranked, weights=zipf_weights(len(sets), s), k=n)
    start = {i: rng.randrange(len(sets[i].questions)) for i in range(len(sets))}
    asked: dict[int, int] = {}
    trace = []
    for index, set_id in enumerate(draws):
        chunk_set = sets[set_id]
        order = list(chunk_set.passages)
        rng.shuffle(order)
        m = asked.get(set_id, 0)
        asked[set_id] = m + 1
        question = chunk_set.questions[(start[set_id] + m) % len(chunk_set.questions)]
        trace.append(TraceRequest(index, set_id, tuple(order), question))
    return trace


def pooled_passages(path: Path | None = None) -> list[str]:
    """Every distinct passage of the MuSiQue file (default the shared musique_dev.json), in file order: the
    corpus of the cache workload (``chunkcache bench workload``)."""
    examples = load_json(path or shared_data_dir() / "musique_dev.json")
    return list(dict.fromkeys(p for ex in examples for p in ex.passages if p.strip()))


def chunk_trace(n_chunks: int, n: int, k: int, s: float = 1.0, repeat: float = 0.2, seed: int = 0) -> list[list[int]]:
    """``n`` queries of ``k`` distinct chunk indices each (ids into a pool of ``n_chunks``), for the cache
    workload. Chunk popularity is Zipf(s) over a seeded ranking; with probability ``repeat`` a query instead
    re-asks the chunk set of an earlier query (uniformly chosen), shuffled — the same retrieval result in a
    new order, which position-independent reuse serves and exact prefix caching does not."""
    if not 1 <= k <= n_chunks:
        raise ValueError(f"k must be between 1 and the pool size {n_chunks}, got {k}")
    if n < 1 or not 0 <= repeat <= 1:
        raise ValueError("the trace needs n >= 1 queries and 0 <= repeat <= 1")
    rng = random.Random(seed)
    ranked = list(range(n_chunks))
    rng.shuffle(ranked)
    cumulative = list(itertools.accumulate(zipf_weights(n_chunks, s)))
    queries: list[list[int]] = []
    for _ in range(n):
        if queries and rng.random() < repeat:
            chosen = list(rng.choice(queries))
            rng.shuffle(chosen)
        else:
            picked: dict[int, None] = {}
            while len(picked) < k:
                picked.setdefault(rng.choices(ranked, cum_weights=cumulative)[0], None)
            chosen = list(picked)
        queries.append(chosen)
    return queries
