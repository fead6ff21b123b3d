"""Retrieval for chunkcache: read documents, chunk them, embed them, index them, ingest incrementally.

Public surface: ``iter_files``/``read_document`` find and read documents; ``chunk_document`` splits
one into ``Chunk``s within a token budget; ``llm_text`` is the text the LLM reads for a chunk (and
whose tokens key its cache); ``Embedder`` embeds texts; ``VectorIndex`` stores and searches chunks,
returning ``Hit``s; ``ingest`` keeps an index in line with a set of files and reports an
``IngestReport``.
"""

from chunkcache.rag.chunk import Chunk, TokenCounter, llm_text
from chunkcache.rag.chunking import chunk_document
from chunkcache.rag.embedder import Embedder, packaged_model_dir
from chunkcache.rag.index import Hit, VectorIndex
from chunkcache.rag.ingest import IngestReport, document_key, ingest
from chunkcache.rag.readers import SUPPORTED_SUFFIXES, decode_document, iter_files, read_document, require_paths

__all__ = [
    "SUPPORTED_SUFFIXES",
    "Chunk",
    "Embedder",
    "Hit",
    "IngestReport",
    "TokenCounter",
    "VectorIndex",
    "chunk_document",
    "decode_document",
    "document_key",
    "ingest",
    "iter_files",
    "llm_text",
    "packaged_model_dir",
    "read_document",
    "require_paths",
]
