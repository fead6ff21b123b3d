"""Pick the chunker for a document: syntax-tree chunking for code, structural chunking for prose.

A chunk is what the engine caches and retrieves, so its size is measured with the LLM's own
tokenizer (``count_tokens``), and every chunk fits ``max_tokens`` by that measure.
"""

from __future__ import annotations

import functools
from pathlib import Path

from chunkcache.rag.chunk import Chunk, TokenCounter
from chunkcache.rag.code import LANGUAGES, chunk_code
from chunkcache.rag.prose import chunk_prose

_MARKUP = {".md": "markdown", ".markdown": "markdown", ".html": "markdown", ".htm": "markdown", ".rst": "rst"}


def chunk_document(
    path: Path, text: str, count_tokens: TokenCounter, max_tokens: int = 256
) -> list[Chunk]:
    """Split ``text`` (the document read from ``path``) into chunks of at most ``max_tokens`` tokens.

    The suffix of ``path`` picks the chunker: a known programming language goes through its
    tree-sitter grammar; anything else is prose, split at Markdown or reStructuredText headings
    where the format has them (HTML arrives from the reader with Markdown headings). Line ranges
    refer to ``text``. Chunkers count the same substrings repeatedly, so counts are memoised for
    the duration of the call.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    count = functools.lru_cache(maxsize=16384)(count_tokens)
    if count("a") > max_tokens:
        raise ValueError(
            f"max_tokens={max_tokens} is below the {count('a')} tokens counted for one character: "
            "does the token counter pad or add special tokens?"
        )
    suffix = path.suffix.lower()
    if suffix in LANGUAGES:
        return chunk_code(text, LANGUAGES[suffix], count, max_tokens)
    return chunk_prose(text, count, max_tokens, _MARKUP.get(suffix))
