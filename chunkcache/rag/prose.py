"""Chunk prose along its structure: sections first, then paragraphs, then sentences.

The document is cut at every Markdown or reStructuredText heading. A section that fits the token
budget stays whole and is merged with following whole sections while the merge still fits, so a
chunk never starts in the middle of a section that could have been kept together. A section that
is too large is handed to ``semchunk``, which splits at the largest whitespace runs first (blank
lines between paragraphs), then at sentence ends, clauses and words, and returns each piece's
character offsets, from which line ranges follow exactly.
"""

from __future__ import annotations

import re

import semchunk

from chunkcache.rag.chunk import Chunk, Spans, TokenCounter

_ATX = re.compile(r" {0,3}#{1,6}(?:[ \t]|$)")
_FENCE = re.compile(r" {0,3}(?:```|~~~)")
_SETEXT = re.compile(r" {0,3}(?:=+|-+)[ \t]*$")
_RST_ADORNMENT = re.compile(r"([!-/:-@\[-`{-~])\1{2,}[ \t]*$")


def chunk_prose(
    text: str, count_tokens: TokenCounter, max_tokens: int, markup: str | None = None
) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``max_tokens`` tokens along its structure.

    ``markup`` is ``"markdown"``, ``"rst"`` or ``None`` (plain text: paragraphs and sentences only).
    """
    spans = Spans(text)
    units: list[tuple[int, int, bool]] = []  # (start, end, is a whole section)
    for start, end in _sections(text, markup):
        body = spans.text(start, end)
        if not body:
            continue
        if count_tokens(body) <= max_tokens:
            units.append((start, end, True))
            continue
        _, offsets = semchunk.chunk(
            text[start:end], max_tokens, count_tokens, memoize=False, offsets=True
        )
        units.extend((start + a, start + b, False) for a, b in offsets)

    merged: list[tuple[int, int, bool]] = []
    for unit in units:
        if merged and merged[-1][2] and unit[2]:
            candidate = spans.text(merged[-1][0], unit[1])
            if count_tokens(candidate) <= max_tokens:
                merged[-1] = (merged[-1][0], unit[1], True)
                continue
        merged.append(unit)
    return [c for start, end, _ in merged if (c := spans.chunk(start, end)) is not None]


def _sections(text: str, markup: str | None) -> list[tuple[int, int]]:
    """``[start, end)`` character ranges of the sections of ``text``, each from one heading to the next."""
    lines = text.split("\n")
    if markup == "markdown":
        heads = _markdown_headings(lines)
    elif markup == "rst":
        heads = _rst_headings(lines)
    else:
        heads = []
    line_offsets = [0]
    for line in lines:
        line_offsets.append(line_offsets[-1] + len(line) + 1)
    cuts = sorted({0, *(line_offsets[i] for i in heads), len(text)})
    return list(zip(cuts, cuts[1:]))


def _markdown_headings(lines: list[str]) -> list[int]:
    """0-based indices of the lines where Markdown headings (ATX ``#`` or setext) begin."""
    heads: list[int] = []
    in_fence = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
        elif in_fence:
            continue
        elif _ATX.match(line):
            heads.append(i)
        elif _SETEXT.match(line) and i > 0 and lines[i - 1].strip() and not _ATX.match(lines[i - 1]):
            start = i - 1
            while start > 0 and lines[start - 1].strip() and start - 1 not in heads:
                start -= 1
            heads.append(start)
    return heads


def _rst_headings(lines: list[str]) -> list[int]:
    """0-based indices of the lines where reStructuredText section titles (with any overline) begin."""
    heads: list[int] = []
    for i in range(1, len(lines)):
        under, title = lines[i].rstrip(), lines[i - 1].rstrip()
        if not _RST_ADORNMENT.match(under) or not title.strip() or _RST_ADORNMENT.match(title):
            continue
        if len(title) > len(under):
            continue
        has_overline = i >= 2 and lines[i - 2].rstrip() == under
        heads.append(i - 2 if has_overline else i - 1)
    return heads
