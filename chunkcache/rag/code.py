"""Chunk source code along its syntax tree, following the cAST recipe.

cAST (Zhang et al., "cAST: Enhancing Code Retrieval-Augmented Generation with Structural Chunking
via Abstract Syntax Tree", 2025) walks the tree top-down: a node that fits the token budget becomes
(part of) a chunk, adjacent small siblings are merged greedily up to the budget, and a node that
is too large is split recursively into its children. A leaf that is still too large (a huge
string literal) is split by lines, merged like siblings, and a single line that is too large (a
minified bundle) by ``semchunk``.

Three refinements keep chunks readable. When a large node inside a definition is split, its
header (a function's signature) joins its first children instead of standing alone. The chunk
being built is closed where a split node ends, so the tail of one function is never glued to the
start of the next. Siblings on one line (a statement and its trailing comment) are tried as one
unit first, so chunks break at line ends. Chunks keep the indentation of their first line.

Tree-sitter works on UTF-8 bytes, so this module does too; spans are cut at token or line
boundaries and therefore always decode.
"""

from __future__ import annotations

import semchunk
from tree_sitter import Node
from tree_sitter_language_pack import get_parser

from chunkcache.rag.chunk import Chunk, Spans, TokenCounter

LANGUAGES: dict[str, str] = {
    ".py": "python",
    ".js": "javascript",
    ".ts": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c",
    ".h": "cpp",  # the C++ grammar parses C headers too; the C grammar does not parse C++ ones
    ".cc": "cpp",
    ".cpp": "cpp",
    ".hpp": "cpp",
}


def chunk_code(text: str, language: str, count_tokens: TokenCounter, max_tokens: int) -> list[Chunk]:
    """Split source ``text`` in tree-sitter ``language`` into chunks of at most ``max_tokens`` tokens."""
    data = text.encode("utf-8")
    tree = get_parser(language).parse(data)
    splitter = _Splitter(Spans(data), count_tokens, max_tokens)
    root = tree.root_node
    if root.child_count and not splitter.fits(root.start_byte, root.end_byte):
        splitter.visit_children(root, top_level=True)
    else:
        splitter.visit(root, top_level=True)
    splitter.flush()
    # Anything the tree left out of every node (it should be only whitespace) still gets chunked.
    spans: list[tuple[int, int]] = []
    pos = 0
    for start, end in [*splitter.spans, (len(data), len(data))]:
        if data[pos:start].strip():
            gap = _Splitter(splitter.source, count_tokens, max_tokens)
            gap.add_lines(pos, start)
            gap.flush()
            spans.extend(gap.spans)
        spans.append((start, end))
        pos = end
    chunks = (splitter.source.chunk(start, end, keep_indent=True) for start, end in spans)
    return [c for c in chunks if c is not None]


class _Splitter:
    """Accumulates byte spans that each fit the budget, in document order."""

    def __init__(self, source: Spans[bytes], count_tokens: TokenCounter, max_tokens: int) -> None:
        self.source = source
        self.count_tokens = count_tokens
        self.max_tokens = max_tokens
        self.spans: list[tuple[int, int]] = []
        self._open: tuple[int, int] | None = None  # the chunk being built

    def fits(self, start: int, end: int) -> bool:
        return self.count_tokens(self.source.text(start, end, keep_indent=True)) <= self.max_tokens

    def flush(self) -> None:
        if self._open is not None:
            self.spans.append(self._open)
            self._open = None

    def take(self, start: int, end: int) -> bool:
        """Add ``[start, end)`` to the open chunk, or else open a chunk with it, if it fits; say if it did."""
        if self._open is not None and self.fits(self._open[0], end):
            self._open = (self._open[0], end)
            return True
        if self.fits(start, end):
            self.flush()
            self._open = (start, end)
            return True
        return False

    def visit(self, node: Node, top_level: bool) -> None:
        """Add ``node`` to the open chunk if it fits, else start a chunk with it, else split it.

        Splitting a node inside a top-level definition keeps the open chunk (the node's header and
        earlier siblings in that definition) so that its first children join it; at the top level
        the open chunk is closed first, so one definition's head is never glued to another's.
        """
        if self.take(node.start_byte, node.end_byte):
            return
        if top_level:
            self.flush()
        if not node.child_count:
            self.add_lines(node.start_byte, node.end_byte)
            return
        self.visit_children(node, top_level=False)
        self.flush()

    def visit_children(self, node: Node, top_level: bool) -> None:
        """Visit ``node``'s children; siblings that share a line are tried as one unit first, so that
        chunks break at line ends (a trailing comment stays with its statement)."""
        groups: list[list[Node]] = []
        for child in node.children:
            if groups and child.start_point.row == groups[-1][-1].end_point.row:
                groups[-1].append(child)
            else:
                groups.append([child])
        for group in groups:
            if len(group) == 1 or not self.take(group[0].start_byte, group[-1].end_byte):
                for child in group:
                    self.visit(child, top_level)

    def add_lines(self, start: int, end: int) -> None:
        """Add ``[start, end)`` line by line, like sibling nodes; a line too long alone is cut by semchunk."""
        source = self.source
        for line in range(source.line_of(start), source.line_of(max(start, end - 1)) + 1):
            lo = max(start, source.line_start(line))
            newline = source.source.find(b"\n", lo)
            hi = end if newline < 0 else min(end, newline)
            if self._open is not None and self.fits(self._open[0], hi):
                self._open = (self._open[0], hi)
                continue
            self.flush()
            if self.fits(lo, hi):
                self._open = (lo, hi)
            else:
                self.spans.extend(self._split_line(lo, hi))

    def _split_line(self, start: int, end: int) -> list[tuple[int, int]]:
        # Chunks keep their first line's indentation, so semchunk must count it in as well.
        start, end = self.source.trim(start, end, keep_indent=True)
        line = self.source.source[start:end].decode("utf-8")
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        count = self.count_tokens if not indent else lambda text: self.count_tokens(indent + text)
        _, offsets = semchunk.chunk(line, self.max_tokens, count, memoize=False, offsets=True)
        return [
            (start + len(line[:a].encode("utf-8")), start + len(line[:b].encode("utf-8")))
            for a, b in offsets
        ]
