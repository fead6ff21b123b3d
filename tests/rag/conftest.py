"""Fixtures for the rag tests: the real packaged embedder and a real WordPiece token counter."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from chunkcache.rag import Chunk, Embedder, packaged_model_dir


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="session")
def count_tokens() -> Callable[[str], int]:
    """Token count by the MiniLM WordPiece tokenizer (the shipped tokenizer.json truncates at 128: undo that)."""
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir(), local_files_only=True)
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    backend.no_truncation()
    backend.no_padding()
    return lambda text: len(backend.encode(text, add_special_tokens=False).ids)


class CountingEmbedder:
    """The real embedder, counting how many texts it was asked to embed."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.texts: list[str] = []

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: list[str]) -> np.ndarray:
        self.texts.extend(texts)
        return self.inner.embed(texts)


@pytest.fixture
def counting_embedder(embedder: Embedder) -> CountingEmbedder:
    return CountingEmbedder(embedder)


def assert_chunks_tile(text: str, chunks: list[Chunk], count: Callable[[str], int], max_tokens: int) -> None:
    """Every chunk is non-blank, within budget, in order, with exact line ranges; together they cover all content."""
    assert chunks, "no chunks"
    pos = 0
    for c in chunks:
        assert c.text.strip(), c
        assert count(c.text) <= max_tokens, (count(c.text), c)
        at = text.find(c.text, pos)
        assert at >= 0, f"chunk not found in order: {c}"
        assert not text[pos:at].strip(), f"content skipped before {c}: {text[pos:at]!r}"
        assert c.start_line == text.count("\n", 0, at) + 1, c
        assert c.end_line == text.count("\n", 0, at + len(c.text) - 1) + 1, c
        pos = at + len(c.text)
    assert not text[pos:].strip(), f"content left after the last chunk: {text[pos:]!r}"


@pytest.fixture
def check_chunks(count_tokens: Callable[[str], int]) -> Callable[[str, list[Chunk], int], None]:
    return lambda text, chunks, max_tokens: assert_chunks_tile(text, chunks, count_tokens, max_tokens)


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """Write text (or bytes) to a file under tmp_path, creating folders; return its path."""

    def _write(rel: str, content: str | bytes) -> Path:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write
