"""Transparent reuse for plain prompts: a chat request that pastes retrieved passages as text.

An unmodified RAG app sends one token stream (its system prompt, its own separators, the passages, the
question) and no chunk boundaries. This module turns that stream into the engine's layout:

1. ``ChunkIndex.find`` (matcher.py) locates stored chunks at any offset by their interior token windows
   and verifies each match token by token, so tokens that merged differently at a seam are left out of the
   match and recomputed instead of losing the chunk.
2. ``split_prompt`` tiles the prompt into segments: matched chunks (reused through the strategy, their
   records sliced to the part that matched), new paragraphs (cut at blank lines) long enough to be worth
   caching ("learn": computed now, captured as records and indexed, so the next request reuses them),
   short text (separators, headers: computed, never cached) and the question (the tail after the last
   blank line: computed, never cached).
3. The prompt runs through the same strategies and executor as a structured request, with no template
   prefix record (the app's own prompt is not our template); every non-chunk segment is a chunk without a
   record, which every strategy computes in full.

The first segment is never learned: it starts the prompt, and a record of it would claim to have been
computed after the template prefix it never saw.
"""

from __future__ import annotations

import torch

from chunkcache.engine.matcher import ChunkIndex, blank_line_tokens, line_end_tokens, split_prompt
from chunkcache.engine.prompt import Layout, Span
from chunkcache.engine.reuse import Prefilled, ReuseEngine
from chunkcache.kv.record import ChunkRecord, variant_name
from chunkcache.strategies.base import Strategy


class PlainPrompts:
    """Finds, reuses and learns chunks in plain prompts for ``reuse`` (see module docstring)."""

    def __init__(self, reuse: ReuseEngine, window: int = 16, min_learn: int = 32) -> None:
        self.reuse = reuse
        self.index = ChunkIndex(window)
        self.min_learn = min_learn
        self.blank_line = blank_line_tokens(reuse.tokenizer)
        self.line_end = line_end_tokens(reuse.tokenizer)

    def index_store(self) -> int:
        """Index every chunk the store holds that the index lacks; return how many were added."""
        added = 0
        for chunk_id, tokens in self.reuse.store.chunk_tokens():
            if chunk_id not in self.index:
                self.index.add(chunk_id, tokens)
                added += 1
        return added

    def prefill(self, ids: list[int], strategy: Strategy) -> Prefilled:
        """Match, lay out, run and learn one plain prompt (module docstring)."""
        segments = split_prompt(ids, self.index.find(ids), self.blank_line.__contains__, self.min_learn,
                                self.line_end.__contains__)
        *parts, question = segments
        reuse = strategy.name != "full"
        spans, chunk_ids, learn = [], [], []
        for i, seg in enumerate(parts):
            tokens = ids[seg.start:seg.end]
            spans.append(Span(seg.start, seg.end))
            if seg.kind == "chunk":
                n = seg.end - seg.start
                whole = seg.offset == 0 and n == len(self.index.tokens(seg.chunk_id))
                chunk_ids.append(seg.chunk_id if whole else f"{seg.chunk_id}[{seg.offset}:{seg.offset + n}]")
            elif seg.kind == "learn" and i > 0:
                chunk_ids.append(self.reuse.chunk_id(tokens))
                learn.append(i)
            else:
                chunk_ids.append("text-" + self.reuse.chunk_id(tokens)[:16])
        matched = [i for i, seg in enumerate(parts) if seg.kind == "chunk"]
        cands: list[list[ChunkRecord]] = [[] for _ in parts]
        if reuse and matched:
            loaded = self.reuse.candidates([parts[i].chunk_id for i in matched], strategy,
                                           [variant_name(chunk_ids[:i]) for i in matched])
            for i, recs in zip(matched, loaded):
                seg = parts[i]
                end = seg.offset + seg.end - seg.start
                cands[i] = [r.slice(seg.offset, end) for r in recs if r.n_tokens >= end]
        layout = Layout(Span(0, 0), spans, Span(question.start, question.end), chunk_ids)
        pre = self.reuse.run(torch.tensor(ids, dtype=torch.long), layout, None, cands, strategy,
                             learn if reuse else [], with_stats=False)
        if reuse:
            for i in learn:
                self.index.add(chunk_ids[i], ids[spans[i].start:spans[i].end])
        pre.stats.chunks_hit = sum(1 for c in cands if c)
        pre.stats.chunks_missed = sum(1 for s in parts if s.kind == "chunk") - pre.stats.chunks_hit + len(learn)
        return pre
