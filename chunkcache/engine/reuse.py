"""The reuse engine: one request from chunk token lists and a question to a prefill and an answer.

Owns the model, the prompt template, the template prefix's record and a record store. For a request it
loads every stored variant of each chunk, lets the strategy choose variants and a plan, runs the partial
prefill, then stores what the request taught: chunks that had no record get their in-context states
captured as records (so the next question reuses them), and optionally every chunk's in-context variant.
Each captured variant is marked exact or not from what the plan actually computed
(``Decision.exact_chunks``), so a variant computed over stale states is never reused as if exact.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from chunkcache.engine.decode import Sampling, generate
from chunkcache.engine.executor import PrefillResult, partial_prefill
from chunkcache.engine.probe import probe_question
from chunkcache.engine.prompt import Layout, PromptTemplate
from chunkcache.engine.workspace import Workspace
from chunkcache.kv.build import STORE_DTYPE, capture, isolated_record, kv_fingerprint, template_record
from chunkcache.kv.record import ChunkRecord, chunk_hash, variant_name
from chunkcache.kv.stats import AttentionStats
from chunkcache.models.base import CausalLM
from chunkcache.store.base import KVTier
from chunkcache.store.memory import MemoryTier
from chunkcache.strategies.base import Decision, Request, Strategy


@dataclass
class RequestStats:
    """What one request cost and reused (reported by ``ask`` and the benchmark)."""

    prompt_tokens: int = 0
    context_tokens: int = 0
    question_tokens: int = 0
    chunks_hit: int = 0
    chunks_missed: int = 0
    computed_per_layer: list[int] = field(default_factory=list)  # the plan's positions plus any probe's
    context_computed_per_layer: list[int] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def recompute_fraction(self) -> float:
        """Context tokens computed / context tokens, averaged over layers (a token computed in 2 of 30
        layers counts 2/30): the share of the chunks' prefill work that was redone."""
        if not self.context_tokens or not self.context_computed_per_layer:
            return 0.0
        n = len(self.context_computed_per_layer)
        return sum(self.context_computed_per_layer) / (n * self.context_tokens)

    @property
    def tokens_reused(self) -> int:
        return self.context_tokens - round(self.recompute_fraction * self.context_tokens)

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens, "context_tokens": self.context_tokens,
            "question_tokens": self.question_tokens, "chunks_hit": self.chunks_hit,
            "chunks_missed": self.chunks_missed, "recompute_fraction": round(self.recompute_fraction, 4),
            "tokens_reused": self.tokens_reused, "tokens_recomputed": self.context_tokens - self.tokens_reused,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }


@dataclass
class Prefilled:
    ids: torch.Tensor
    layout: Layout
    decision: Decision
    result: PrefillResult
    stats: RequestStats
    order: list[int] | None = None  # prompt chunk k is the caller's chunk order[k] (ReuseEngine.prefill)


def decide_and_prefill(model: CausalLM, ids: torch.Tensor, layout: Layout, prefix: ChunkRecord | None,
                       cands: list[list[ChunkRecord]], strategy: Strategy, reserve: int = 0,
                       stats: AttentionStats | None = None
                       ) -> tuple[Request, Decision, PrefillResult, PrefillResult | None]:
    """Let ``strategy`` choose (running the question probe, engine/probe.py, when it asks for one) and run
    its plan's partial prefill over the probe's workspace, so the request's records are placed once
    (engine/workspace.py). Returns the request, the decision, the plan's prefill and the probe's (None
    when the strategy did not probe)."""
    probed: list[tuple[Workspace, PrefillResult]] = []

    def probe(records: list[ChunkRecord | None], layers: list[int], last_row: bool) -> torch.Tensor:
        ws = Workspace.build(model, layout.length, layout, prefix, records, None, reserve)
        scores, result = probe_question(model, ids, layout, prefix, records, layers, last_row, ws)
        probed[:] = [(ws, result)]
        return scores

    req = Request(layout, cands, model.shape.n_layers, probe, ids)
    decision = strategy.decide(req)
    result = partial_prefill(model, ids, layout, prefix, decision.records, decision.plan, reserve=reserve,
                             stats=stats, workspace=probed[0][0] if probed else None)
    return req, decision, result, probed[0][1] if probed else None


def for_prefill(record: ChunkRecord, device: torch.device, dtype: torch.dtype) -> ChunkRecord:
    """``record`` ready for a prefill on ``device``: moved there in ``dtype``, except a record in pinned host
    memory for a CUDA model, which the workspace streams in layer by layer while compute runs
    (engine/workspace.py) instead of copying it up front."""
    if device.type == "cuda" and record.keys[0].is_pinned():
        return record
    return record.to(device, dtype, non_blocking=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ReuseEngine:
    """See module docstring. ``store`` defaults to an in-memory tier of ``memory_bytes``."""

    def __init__(self, model: CausalLM, tokenizer, store: KVTier | None = None,
                 store_dtype: torch.dtype = STORE_DTYPE, memory_bytes: int = 2 << 30) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = PromptTemplate(tokenizer)
        self.fingerprint = kv_fingerprint(model, self.template)
        self.store = store if store is not None else MemoryTier(memory_bytes)
        self.store_dtype = store_dtype
        t0 = time.perf_counter()
        self.prefix = template_record(model, self.template, store_dtype).to(model.device, model.dtype)
        _sync(model.device)
        # Prefill milliseconds per computed token: first from the template prefix (short, so overhead makes it
        # an overestimate), then a moving average over requests. Turns a TTFT budget into tokens (rag/select.py).
        self.ms_per_token = (time.perf_counter() - t0) * 1e3 / max(1, len(self.template.prefix_ids))
        self.stop_ids = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}

    def chunk_id(self, token_ids: list[int]) -> str:
        return chunk_hash(self.fingerprint, token_ids)

    def encode_chunk(self, text: str) -> tuple[str, list[int]]:
        """(cache identity, token ids) of a chunk's text, tokenized alone."""
        ids = self.template.encode_chunk(text)
        if not ids:
            raise ValueError("empty chunk: it has no tokens")
        return self.chunk_id(ids), ids

    def precompute(self, token_ids: list[int], chunk_id: str | None = None) -> ChunkRecord:
        """Build and store the isolated record of one chunk (ingest time)."""
        chunk_id = chunk_id or self.chunk_id(token_ids)
        rec = isolated_record(self.model, self.template, self.prefix, token_ids, chunk_id, self.store_dtype)
        self.store.put(rec)
        return rec

    def candidates(self, chunk_ids: list[str], strategy: Strategy | None = None,
                   in_place: list[str] | None = None) -> list[list[ChunkRecord]]:
        """Readable stored variants of each chunk, moved to the model's device and dtype (pinned host records
        stay where they are: the workspace streams them in): those ``strategy``
        wants (``Strategy.wanted_variants``, chosen from variant names before loading), or all of them.
        ``in_place[i]`` names the variant of chunk i computed after exactly what precedes it in the request
        (default: after ``chunk_ids[:i]``, as in a ``template | chunks | question`` prompt)."""
        dev, dt = self.model.device, self.model.dtype
        if in_place is None:
            in_place = [variant_name(chunk_ids[:i]) for i in range(len(chunk_ids))]
        wanted = []
        for cid, here in zip(chunk_ids, in_place):
            names = self.store.variants(cid)
            wanted.append(strategy.wanted_variants(names, here) if strategy is not None else names)
        keys = [(cid, v) for cid, names in zip(chunk_ids, wanted) for v in names]
        fetched = iter(self.store.get_many(keys))  # one batched read: slow tiers fetch concurrently
        return [[for_prefill(r, dev, dt) for r in (next(fetched) for _ in names) if r is not None] for names in wanted]

    def _observe_repair(self, layout: Layout, decision) -> None:
        """Tell the store what fraction of each reused record this request recomputed (at its first layer):
        the r(c) of value-based eviction (store/eviction/value.py)."""
        initial = decision.plan.initial.cpu()
        for span, rec in zip(layout.chunks, decision.records):
            if rec is not None and len(span):
                inside = int(((initial >= span.start) & (initial < span.end)).sum())
                self.store.observe_recompute(rec.chunk_id, rec.variant, inside / len(span))

    def prefill(self, chunks: list[list[int]], question_ids: list[int], strategy: Strategy,
                reserve: int = 0, capture_variants: bool = False,
                edges: list[tuple[int, int]] | None = None) -> Prefilled:
        """Assemble ``template prefix | chunks | question``, choose, run the partial prefill; store records for
        missed chunks (and, with ``capture_variants``, every chunk's in-context variant). The strategy may
        reorder the chunks and honour ``edges`` (source, target) between them (``Strategy.arrange``);
        ``Prefilled.order`` maps prompt order back to the caller's."""
        t0 = time.perf_counter()
        given = [self.chunk_id(c) for c in chunks]
        order, kept = strategy.arrange(given, list(edges or []))
        where = {i: k for k, i in enumerate(order)}
        chunk_ids = [given[i] for i in order]
        ids, layout = self.template.assemble([chunks[i] for i in order], question_ids, chunk_ids)
        layout.edges = sorted((where[s], where[t]) for s, t in kept)
        cands = self.candidates(chunk_ids, strategy, strategy.in_place_variants(layout)) \
            if strategy.name != "full" else [[] for _ in chunks]
        missed = [i for i, c in enumerate(cands) if not c]
        if capture_variants:
            learn = list(range(len(chunks)))
        else:  # `full` computes everything and keeps nothing
            learn = [] if strategy.name == "full" else missed
        pre = self.run(ids, layout, self.prefix, cands, strategy, learn, reserve=reserve, started=t0,
                       with_stats=strategy.uses_record_stats or capture_variants)  # variants serve Cache-Craft
        pre.order = order
        return pre

    def run(self, ids: torch.Tensor, layout: Layout, prefix: ChunkRecord | None, cands: list[list[ChunkRecord]],
            strategy: Strategy, learn: list[int], reserve: int = 0, started: float | None = None,
            with_stats: bool = False) -> Prefilled:
        """Decide and run the partial prefill of an assembled prompt ``ids`` laid out as ``layout`` (after the
        template ``prefix`` record, or after nothing when None), each chunk's candidate records ``cands``
        already loaded; then capture the chunks ``learn`` as records. ``with_stats`` collects Cache-Craft
        attention statistics for the captured records (an explicit softmax over the computed rows)."""
        dev = self.model.device
        t0 = time.perf_counter() if started is None else started
        _sync(dev)
        t1 = time.perf_counter()
        stats = AttentionStats(layout, self.model.shape.n_layers) if learn and with_stats else None
        req, decision, result, probe = decide_and_prefill(self.model, ids, layout, prefix, cands, strategy,
                                                          reserve, stats)
        _sync(dev)
        t2 = time.perf_counter()
        self._observe_repair(layout, decision)
        computed = sum(result.computed_per_layer) / max(1, len(result.computed_per_layer))
        self.ms_per_token = 0.8 * self.ms_per_token + 0.2 * (t2 - t1) * 1e3 / max(1.0, computed)
        if learn:
            identities = decision.identities(req)  # after the prefill: a shrinking plan knows what it kept
            for rec in capture(self.fingerprint, result, ids, layout, decision.records, stats, learn, identities,
                               self.store_dtype):
                self.store.put(rec)
        missed = sum(1 for c in cands if not c)
        rs = RequestStats(
            prompt_tokens=layout.length, context_tokens=layout.context_tokens,
            question_tokens=len(layout.question), chunks_hit=len(cands) - missed, chunks_missed=missed,
            computed_per_layer=[a + b for a, b in zip(result.computed_per_layer, probe.computed_per_layer)]
            if probe is not None else result.computed_per_layer,
            context_computed_per_layer=result.context_computed_per_layer,
            timings_ms={"load": (t1 - t0) * 1e3, "prefill": (t2 - t1) * 1e3,
                        "store": (time.perf_counter() - t2) * 1e3})
        return Prefilled(ids, layout, decision, result, rs)

    def generate(self, pre: Prefilled, max_new_tokens: int, sampling: Sampling = Sampling()) -> Iterator[int]:
        return generate(self.model, pre.result, max_new_tokens, self.stop_ids, sampling)
