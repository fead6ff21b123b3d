"""Incremental ingestion: bring the index in line with the files under the given paths.

A document is identified by its resolved absolute path and versioned by the sha256 of its bytes.
A run hashes every file; unchanged files cost nothing more. Changed or new files are read,
chunked and embedded; a changed file's old chunks are removed before its new ones are added.
Indexed documents under the given paths that no longer exist (or can no longer be read) are
removed. The engine is told, through ``on_chunk_removed``, which chunk caches are no longer used
by any document, and through ``precompute``, which new chunks need a cache.

Each chunk's cache key is ``chunk_key(llm_text(path, chunk))``: the hash of exactly the text the
LLM will read, source header included, so a cached KV always matches what a retrieval assembles.

Phases run one after another, each with its own progress bar: files (hash, read, chunk), chunks
(embed), caches (precompute). The index is saved before precompute starts, so a long or failing
precompute never loses the ingested documents.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from chunkcache.rag.chunk import Chunk, TokenCounter, llm_text
from chunkcache.rag.chunking import chunk_document
from chunkcache.rag.embedder import Embedder
from chunkcache.rag.index import VectorIndex
from chunkcache.rag.readers import decode_document, iter_files

log = logging.getLogger(__name__)

# Chunk budget in LLM tokens: the embedder reads at most 256 word pieces (MAX_TOKENS), so a larger chunk
# would be embedded by its head only and retrieved for the wrong reasons.
CHUNK_TOKENS = 256
EMBED_SLICE = 256  # texts per embed call: bounds memory and sets the progress bar's granularity
PRECOMPUTE_SLICE = 8  # chunks per precompute call, for the same reasons


@dataclass
class IngestReport:
    """What one ingestion run did."""

    files_seen: int = 0
    files_added: int = 0
    files_updated: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    files_skipped: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    seconds: float = 0.0


@dataclass
class _Changed:
    key: str
    sha256: str
    chunks: list[Chunk]
    was_indexed: bool


def document_key(path: Path) -> str:
    """The identity of the document at ``path`` in the index: its resolved absolute path."""
    return str(path.resolve())


def ingest(
    paths: list[Path],
    index: VectorIndex,
    embedder: Embedder,
    count_tokens: TokenCounter,
    chunk_key: Callable[[str], str],
    on_chunk_removed: Callable[[str], None],
    precompute: Callable[[list[tuple[str, str]]], None] | None = None,
    is_cached: Callable[[str], bool] | None = None,
    max_tokens: int = CHUNK_TOKENS,
    progress: bool = True,
) -> IngestReport:
    """Index the documents under ``paths`` incrementally and return what changed.

    ``count_tokens`` measures chunks with the LLM's tokenizer; ``chunk_key`` maps a chunk's LLM
    text to its cache key; ``on_chunk_removed`` is called once per cache key that no document uses
    any more; ``precompute`` receives ``(chunk_key, llm_text)`` for every chunk whose key was not in
    use before this run, and, when ``is_cached`` is given, for every indexed chunk whose cache is missing
    (an earlier run killed during precompute, or caches cleared). Raises ``FileNotFoundError`` before changing anything if a path is missing.
    """
    started = time.perf_counter()
    show = progress and sys.stderr.isatty()
    files = list(iter_files(paths))
    report = IngestReport(files_seen=len(files))
    in_use_before = index.chunk_hashes_in_use()

    changed, present = _scan(files, index, count_tokens, max_tokens, report, show)
    roots = [p.resolve() for p in paths]
    gone = [
        doc for doc in index.documents() if doc not in present and any(Path(doc).is_relative_to(r) for r in roots)
    ]
    vectors = _embed([c.text for doc in changed for c in doc.chunks], embedder, show)

    removed: set[str] = set()
    for key in gone:
        old = index.remove_document(key)
        removed.update(old)
        report.files_removed += 1
        report.chunks_removed += len(old)
    new_pairs: dict[str, str] = {}
    offset = 0
    for doc in changed:
        if doc.was_indexed:
            old = index.remove_document(doc.key)
            removed.update(old)
            report.chunks_removed += len(old)
        texts = [llm_text(doc.key, c) for c in doc.chunks]
        hashes = [chunk_key(t) for t in texts]
        index.add_document(doc.key, doc.sha256, doc.chunks, vectors[offset : offset + len(texts)], hashes)
        offset += len(texts)
        report.chunks_added += len(texts)
        new_pairs.update((h, t) for h, t in zip(hashes, texts) if h not in in_use_before)
    index.save()

    if precompute is not None and is_cached is not None:
        for hit in index.live_chunks():
            if hit.chunk_hash not in new_pairs and not is_cached(hit.chunk_hash):
                new_pairs[hit.chunk_hash] = hit.llm_text
    in_use = index.chunk_hashes_in_use()
    for chunk_hash in sorted(removed - in_use):
        on_chunk_removed(chunk_hash)
    if precompute is not None and new_pairs:
        pairs = list(new_pairs.items())
        with tqdm(total=len(pairs), desc="caches", unit="chunk", disable=not show) as bar:
            for lo in range(0, len(pairs), PRECOMPUTE_SLICE):
                batch = pairs[lo : lo + PRECOMPUTE_SLICE]
                precompute(batch)
                bar.update(len(batch))
    report.seconds = time.perf_counter() - started
    return report


def _scan(
    files: list[Path],
    index: VectorIndex,
    count_tokens: TokenCounter,
    max_tokens: int,
    report: IngestReport,
    show: bool,
) -> tuple[list[_Changed], set[str]]:
    """Hash every file; read and chunk the new or changed ones. Returns them and the keys still present."""
    changed: list[_Changed] = []
    present: set[str] = set()
    for path in tqdm(files, desc="files", unit="file", disable=not show):
        key = document_key(path)
        try:
            data = path.read_bytes()
        except OSError as err:
            log.warning("skipping %s: cannot read it (%s)", path, err.strerror or err)
            report.files_skipped += 1
            continue
        sha = hashlib.sha256(data).hexdigest()
        indexed_sha = index.document_sha(key)
        if sha == indexed_sha:
            report.files_unchanged += 1
            present.add(key)
            continue
        text = decode_document(path, data)
        if text is None:
            report.files_skipped += 1
            continue
        chunks = chunk_document(path, text, count_tokens, max_tokens)
        changed.append(_Changed(key, sha, chunks, was_indexed=indexed_sha is not None))
        present.add(key)
        if indexed_sha is None:
            report.files_added += 1
        else:
            report.files_updated += 1
    return changed, present


def _embed(texts: list[str], embedder: Embedder, show: bool) -> np.ndarray:
    """Embed ``texts`` in slices, advancing a progress bar over chunks."""
    parts = [np.empty((0, embedder.dim), dtype=np.float32)]
    with tqdm(total=len(texts), desc="chunks", unit="chunk", disable=not show or not texts) as bar:
        for lo in range(0, len(texts), EMBED_SLICE):
            parts.append(embedder.embed(texts[lo : lo + EMBED_SLICE]))
            bar.update(len(parts[-1]))
    return np.concatenate(parts)
