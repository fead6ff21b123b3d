"""A chunk of a document, the text the LLM sees for it, and offset → line bookkeeping.

Chunkers work on character (prose) or byte (tree-sitter) offsets; everything downstream wants
1-based inclusive line ranges, for citations (``docs/keys.md:12-30``) and for the chunk header
the LLM reads. ``Spans`` does that conversion once per document, for either kind of offset.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

TokenCounter = Callable[[str], int]

S = TypeVar("S", str, bytes)


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: its text and the 1-based inclusive line range it spans.

    Lines are those of the text ``read_document`` returned: the file's own lines for text and
    code, the lines of the extracted text for HTML.
    """

    text: str
    start_line: int
    end_line: int


def llm_text(path: str, chunk: Chunk) -> str:
    """The text the LLM is given for ``chunk`` of the document at ``path``.

    A one-line source header lets the model cite where a fact came from. The chunk's cache key is
    the hash of this text's tokens, so it must depend only on what the index stores.
    """
    return f"[{path}:{chunk.start_line}-{chunk.end_line}]\n{chunk.text}"


class Spans(Generic[S]):
    """Turns ``[start, end)`` offsets in one source (``str`` or ``bytes``) into trimmed chunks."""

    def __init__(self, source: S) -> None:
        self.source = source
        newline = "\n" if isinstance(source, str) else b"\n"
        self._newlines = [m.start() for m in re.finditer(re.escape(newline), source)]

    def line_of(self, offset: int) -> int:
        """1-based line number of the character or byte at ``offset``."""
        return bisect.bisect_left(self._newlines, offset) + 1

    def line_start(self, line: int) -> int:
        """Offset of the first character or byte of 1-based ``line``."""
        return 0 if line == 1 else self._newlines[line - 2] + 1

    def trim(self, start: int, end: int, keep_indent: bool = False) -> tuple[int, int]:
        """Shrink ``[start, end)`` to exclude surrounding whitespace (empty if it is all whitespace).

        With ``keep_indent`` the span keeps the spaces and tabs that indent its first line, so a
        method cut out of a class still reads as consistently indented code.
        """
        src = self.source
        head = src[start:end]
        body = head.lstrip()
        start += len(head) - len(body)
        end = start + len(body.rstrip())
        if start >= end:
            return start, start
        if keep_indent:
            line_start = self.line_start(self.line_of(start))
            if not src[line_start:start].strip(" \t" if isinstance(src, str) else b" \t"):
                start = line_start
        return start, end

    def text(self, start: int, end: int, keep_indent: bool = False) -> str:
        """The trimmed text of ``[start, end)``, decoded if the source is bytes."""
        start, end = self.trim(start, end, keep_indent)
        piece = self.source[start:end]
        return piece if isinstance(piece, str) else piece.decode("utf-8")

    def chunk(self, start: int, end: int, keep_indent: bool = False) -> Chunk | None:
        """The trimmed ``[start, end)`` as a ``Chunk``, or ``None`` if it holds only whitespace."""
        text = self.text(start, end, keep_indent)
        if not text.strip():
            return None
        start, end = self.trim(start, end)
        return Chunk(text, self.line_of(start), self.line_of(end - 1))
