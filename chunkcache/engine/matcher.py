"""Find stored chunks inside a plain prompt's token stream, and split the prompt around them.

An OpenAI-compatible request carries its retrieved passages as plain text inside chat messages, so the
engine never sees chunk boundaries: it sees one token stream. ``ChunkIndex.find`` locates the spans of that
stream that equal stored chunks (at any offset, with no separator required) so their KV records can be
reused. A passage tokenized inside a larger text can differ from the passage tokenized alone at its edges
(a leading space merges into the first word, ``"passage.\\n\\n"`` merges into one token, ``"[2] "`` replaces
``"[1] "``), so matching starts from a window in the chunk's interior and extends outwards as far as the
tokens agree: differing edge tokens are left to be recomputed instead of losing the whole chunk.

``split_prompt`` then tiles the prompt into reused chunks, new passages worth caching for later requests,
plain computed text, and the question tail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

CHUNK = "chunk"
LEARN = "learn"
TEXT = "text"
QUESTION = "question"


@dataclass(frozen=True)
class Match:
    """Prompt span ``[start, end)`` equals the chunk's tokens ``[offset, offset + end - start)``."""

    start: int
    end: int
    chunk_id: str
    offset: int

    def __len__(self) -> int:
        return self.end - self.start


class ChunkIndex:
    """Stored chunks' token ids, indexed by anchor windows so a prompt can be searched in one pass.

    Each chunk is indexed by its ``window``-token runs at anchor offsets: every multiple of ``window`` and the
    last full window. A run of ``2 * window - 1`` or more tokens shared by prompt and chunk therefore always
    contains a whole anchor window and is found; shorter shared runs may or may not be. Chunks shorter than
    ``window`` have no anchor and are not indexed (they are never matched): a handful of tokens is cheaper to
    recompute than to look up, and short runs would match by coincidence.

    A window shared by many chunks (boilerplate) keeps only its first ``max_per_window`` entries, which keeps
    the cost of ``find`` at O(prompt length x window) however many chunks are stored.

    Thread-safe: the engine thread adds chunks while request threads call ``find``.
    """

    def __init__(self, window: int = 16, max_per_window: int = 8) -> None:
        if window < 1 or max_per_window < 1:
            raise ValueError("window and max_per_window must be positive")
        self.window = window
        self.max_per_window = max_per_window
        self._chunks: dict[str, tuple[int, ...]] = {}
        self._anchors: dict[tuple[int, ...], list[tuple[str, int]]] = {}
        self._lock = threading.Lock()

    def _anchor_offsets(self, n: int) -> list[int]:
        offsets = list(range(0, n - self.window + 1, self.window))
        if offsets and offsets[-1] != n - self.window:
            offsets.append(n - self.window)
        return offsets

    def add(self, chunk_id: str, token_ids: list[int]) -> None:
        """Store (or replace) a chunk's token ids and index its anchor windows."""
        toks = tuple(token_ids)
        with self._lock:
            self._drop(chunk_id)
            self._chunks[chunk_id] = toks
            for off in self._anchor_offsets(len(toks)):
                entries = self._anchors.setdefault(toks[off:off + self.window], [])
                if len(entries) < self.max_per_window:
                    entries.append((chunk_id, off))

    def remove(self, chunk_id: str) -> None:
        """Forget a chunk (its record was evicted); unknown ids are ignored."""
        with self._lock:
            self._drop(chunk_id)

    def _drop(self, chunk_id: str) -> None:
        toks = self._chunks.pop(chunk_id, None)
        if toks is None:
            return
        for off in self._anchor_offsets(len(toks)):
            key = toks[off:off + self.window]
            entries = self._anchors.get(key)
            if entries is None:
                continue
            entries[:] = [e for e in entries if e != (chunk_id, off)]
            if not entries:
                del self._anchors[key]

    def __contains__(self, chunk_id: object) -> bool:
        with self._lock:
            return chunk_id in self._chunks

    def __len__(self) -> int:
        with self._lock:
            return len(self._chunks)

    def tokens(self, chunk_id: str) -> list[int]:
        """The stored token ids of a chunk (KeyError if unknown)."""
        with self._lock:
            return list(self._chunks[chunk_id])

    def find(self, ids: list[int]) -> list[Match]:
        """Non-overlapping spans of ``ids`` equal to stored chunk tokens, in prompt order.

        Every prompt position is looked up as a window. The index is keyed by the windows' exact token
        tuples, so a hit is an equal window (a hash collision can never pass as one); each hit is extended
        token by token left (never into the previous match) and right as far as prompt and chunk agree.

        Stored chunks may overlap (sliding-window chunking, a passage and its longer revision), so the first
        hit is not trusted to be the best: the hits of the next ``2 * window - 2`` positions are extended
        too, which reaches every run of ``2 * window - 1`` tokens or more that starts within ``window`` tokens
        of the first hit (its first anchor is at most ``window - 1`` tokens into it). The longest run wins (ties: the earliest, then the earliest stored entry); a shorter run that starts
        before it keeps its part up to the winner's start if that is still ``window`` tokens long. Scanning
        resumes at the winner's end, so a chunk pasted twice matches twice and a chunk with an edited middle
        matches in pieces. Each accepted match costs O(window²) work in lookups and covers at least ``window`` tokens,
        so a whole scan is O(len(ids) x window) (times ``max_per_window`` at worst).
        """
        w = self.window
        n = len(ids)
        matches: list[Match] = []
        floor = 0  # the previous match's end: later matches never reach left of it
        pos = 0
        with self._lock:
            while pos + w <= n:
                runs = self._runs_at(ids, pos, floor)
                if not runs:
                    pos += 1
                    continue
                for later in range(pos + 1, min(pos + 2 * w - 1, n - w + 1)):
                    runs += self._runs_at(ids, later, floor)
                best = max(runs, key=lambda m: (len(m), -m.start))
                heads = [Match(m.start, best.start, m.chunk_id, m.offset)
                         for m in runs if best.start - m.start >= w]
                if heads:
                    matches.append(max(heads, key=len))
                matches.append(best)
                floor = pos = best.end
        return matches

    def _runs_at(self, ids: list[int], pos: int, floor: int) -> list[Match]:
        """Every stored chunk's maximal run through the window at ``pos``, not reaching left of ``floor``."""
        w = self.window
        runs = []
        for chunk_id, off in self._anchors.get(tuple(ids[pos:pos + w]), ()):
            toks = self._chunks[chunk_id]
            left = 0
            while pos - left > floor and off - left > 0 and ids[pos - left - 1] == toks[off - left - 1]:
                left += 1
            right = w
            while pos + right < len(ids) and off + right < len(toks) and ids[pos + right] == toks[off + right]:
                right += 1
            runs.append(Match(pos - left, pos + right, chunk_id, off - left))
        return runs


@dataclass(frozen=True)
class Segment:
    """Prompt span ``[start, end)`` and what to do with it.

    ``kind`` is ``"chunk"`` (reuse the KV of ``chunk_id`` from token ``offset``), ``"learn"`` (new text worth
    caching as a chunk for later requests), ``"text"`` (computed, never cached) or ``"question"`` (the prompt's
    tail, computed, never cached).
    """

    start: int
    end: int
    kind: str
    chunk_id: str | None = None
    offset: int = 0

    def __len__(self) -> int:
        return self.end - self.start


def _pieces(start: int, end: int, ids: list[int], is_boundary: Callable[[int], bool],
            is_line_end: Callable[[int], bool] | None) -> list[tuple[int, int]]:
    """``[start, end)`` cut after every token that ends a blank line; every piece non-empty."""
    out = []
    piece_start = start
    for i in range(start, end):
        pair = is_line_end is not None and i > 0 and is_line_end(ids[i - 1]) and is_line_end(ids[i])
        if pair or is_boundary(ids[i]):
            out.append((piece_start, i + 1))
            piece_start = i + 1
    if piece_start < end:
        out.append((piece_start, end))
    return out


def split_prompt(ids: list[int], matches: list[Match], is_boundary: Callable[[int], bool],
                 min_learn: int = 32, is_line_end: Callable[[int], bool] | None = None) -> list[Segment]:
    """Tile ``[0, len(ids))`` into chunk, learn, text and question segments, in order.

    ``matches`` are ``ChunkIndex.find``'s (sorted, non-overlapping). The gaps between them are cut after
    every token that ends a blank line, so pieces are paragraphs, i.e. likely passages: a token for which
    ``is_boundary`` holds (the caller passes "this token's text contains a blank line"), or, when
    ``is_line_end`` is given, the second of two adjacent line-end tokens (tokenizers such as SmolLM2's
    write a blank line between words as two ``"\\n"`` tokens). Pieces of ``min_learn`` tokens
    or more are learned, shorter ones are plain text, and adjacent text pieces merge. The final piece of the
    prompt is the question: it differs on every request, so it is never learned. A prompt ending inside a
    match gives up that match's last token as a one-token question, so the last position is always
    computed (its logits start decoding).
    """
    if not ids:
        raise ValueError("split_prompt needs a non-empty prompt")
    n = len(ids)
    matches = list(matches)
    if matches and matches[-1].end > n:
        raise ValueError(f"match {matches[-1]} reaches past the prompt's {n} tokens")
    if matches and matches[-1].end == n:
        last = matches.pop()
        if len(last) > 1:
            matches.append(Match(last.start, n - 1, last.chunk_id, last.offset))
    segments: list[Segment] = []

    def emit(seg: Segment) -> None:
        prev = segments[-1] if segments else None
        if prev is not None and prev.kind == TEXT and seg.kind == TEXT:
            segments[-1] = Segment(prev.start, seg.end, TEXT)
        else:
            segments.append(seg)

    def gap(start: int, end: int, final: bool) -> None:
        pieces = _pieces(start, end, ids, is_boundary, is_line_end)
        for k, (a, b) in enumerate(pieces):
            if final and k == len(pieces) - 1:
                emit(Segment(a, b, QUESTION))
            else:
                emit(Segment(a, b, LEARN if b - a >= min_learn else TEXT))

    cursor = 0
    for m in matches:
        if m.start < cursor:
            raise ValueError(f"matches overlap or are out of order at {m}")
        gap(cursor, m.start, final=False)
        emit(Segment(m.start, m.end, CHUNK, m.chunk_id, m.offset))
        cursor = m.end
    gap(cursor, n, final=True)
    return segments


def _vocabulary(tokenizer) -> list[str]:
    return tokenizer.batch_decode([[i] for i in range(len(tokenizer))])


def blank_line_tokens(tokenizer) -> set[int]:
    """Ids of vocabulary tokens whose decoded text contains a blank line (``"\\n\\n"``).

    Decodes the whole vocabulary (a fraction of a second), so build it once per tokenizer and pass its
    ``__contains__`` as ``split_prompt``'s ``is_boundary``.
    """
    return {i for i, text in enumerate(_vocabulary(tokenizer)) if "\n\n" in text}


def line_end_tokens(tokenizer) -> set[int]:
    """Ids of vocabulary tokens made of line breaks (and spaces or tabs) only: ``"\\n"``, ``" \\n"``, ``"\\n "``.

    Two of them in a row write a blank line, which is how SmolLM2's tokenizer splits ``"text.\\n\\nNext"``.
    Build it once per tokenizer and pass its ``__contains__`` as ``split_prompt``'s ``is_line_end``.
    """
    return {i for i, text in enumerate(_vocabulary(tokenizer))
            if "\n" in text and not text.strip(" \t\n")}
