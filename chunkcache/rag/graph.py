"""The HNSW graph and its file: a cache of the vectors in SQLite, never the source of truth.

The file is the faiss serialisation behind a small header: a magic tag, the database generation the
graph reflects, its vector count and a CRC32 of the payload. It is written to a temporary file,
fsynced and renamed over the old one, so a reader sees either the old file or the new one. Loading
refuses a file that is truncated, corrupt, or from another generation of the database; the caller
then rebuilds the graph from SQLite.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import faiss
import numpy as np

HNSW_M = 32
EF_SEARCH = 64
_HEADER = struct.Struct("<8sQQI")  # magic, generation, ntotal, crc32 of the faiss payload
_MAGIC = b"CCHNSW01"


class UnusableGraph(Exception):
    """The graph file cannot be used as is; the message says why."""


def new_graph(dim: int) -> faiss.IndexIDMap2:
    """An empty HNSW graph (inner product, M=32) addressed by our chunk ids."""
    hnsw = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efSearch = EF_SEARCH
    return faiss.IndexIDMap2(hnsw)


def save_graph(path: Path, graph: faiss.IndexIDMap2, generation: int) -> None:
    """Write ``graph`` stamped with ``generation`` to ``path`` atomically."""
    payload = faiss.serialize_index(graph).tobytes()
    header = _HEADER.pack(_MAGIC, generation, graph.ntotal, zlib.crc32(payload))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_graph(path: Path, generation: int, ntotal: int, dim: int) -> faiss.IndexIDMap2:
    """The graph saved at ``path`` if it is intact and holds exactly ``ntotal`` ``dim``-d vectors of
    database ``generation``; raises ``UnusableGraph`` otherwise (``FileNotFoundError`` if absent)."""
    data = path.read_bytes()
    if len(data) < _HEADER.size:
        raise UnusableGraph("truncated")
    magic, saved_generation, saved_ntotal, crc = _HEADER.unpack_from(data)
    payload = data[_HEADER.size :]
    if magic != _MAGIC or zlib.crc32(payload) != crc:
        raise UnusableGraph("corrupt (bad magic or checksum)")
    if saved_generation != generation or saved_ntotal != ntotal:
        raise UnusableGraph(f"stale (generation {saved_generation}, database at {generation})")
    try:
        graph = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
    except RuntimeError as err:
        raise UnusableGraph(f"unreadable ({str(err).splitlines()[0]})") from err
    if not isinstance(graph, faiss.IndexIDMap2) or graph.ntotal != ntotal or graph.d != dim:
        raise UnusableGraph("not the graph the database describes")
    return graph
