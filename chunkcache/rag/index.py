"""The vector index: faiss HNSW for search, SQLite as the source of truth.

Two stores must stay consistent even if the process is killed at any instant, so only one of them
is authoritative. ``meta.sqlite`` holds documents, chunks, and each chunk's vector as a float32
blob; every change is one SQLite transaction that also bumps a ``generation`` counter.
``index.faiss`` is a cache of the HNSW graph over those vectors, stamped with the generation it
reflects (see ``graph.py``). On open, a missing, corrupt or stale file is rebuilt from SQLite, so a
crash costs at most a rebuild. Mutations update the in-memory graph; ``save`` (also called by
``close`` and after a rebuild) writes it, so ingesting many documents writes the file once.

HNSW cannot delete vectors. Removing a document marks its chunk rows ``deleted`` (tombstones) and
searches exclude those ids with a faiss ID selector; once tombstones exceed 20% of the vectors the
graph is rebuilt from the live rows and the tombstoned rows are purged.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from chunkcache.rag.chunk import Chunk, llm_text
from chunkcache.rag.graph import EF_SEARCH, UnusableGraph, load_graph, new_graph, save_graph

log = logging.getLogger(__name__)

REBUILD_FRACTION = 0.2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, n_chunks INT NOT NULL, ingested_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL, start_line INT NOT NULL,
    end_line INT NOT NULL, text TEXT NOT NULL, chunk_hash TEXT NOT NULL,
    deleted INT NOT NULL DEFAULT 0, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_path ON chunks (path);
CREATE INDEX IF NOT EXISTS chunks_by_hash ON chunks (chunk_hash);
"""


@dataclass(frozen=True)
class Hit:
    """One search result: a chunk, where it comes from, and its cosine similarity to the query."""

    id: int
    score: float
    path: str
    start_line: int
    end_line: int
    text: str
    chunk_hash: str

    @property
    def chunk(self) -> Chunk:
        return Chunk(self.text, self.start_line, self.end_line)

    @property
    def llm_text(self) -> str:
        """The text the LLM was given for this chunk at ingest (source header + chunk text)."""
        return llm_text(self.path, self.chunk)


class VectorIndex:
    """Documents' chunks with their embeddings, searchable by inner product, persisted under ``root``."""

    def __init__(self, root: Path, dim: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self._faiss_path = self.root / "index.faiss"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.root / "meta.sqlite", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._db:
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('dim', ?), ('generation', '0')", (str(dim),))
        stored_dim = int(self._meta("dim"))
        if stored_dim != dim:
            raise ValueError(
                f"{self.root} holds {stored_dim}-d vectors but {dim}-d was asked for: "
                "the embedding model changed; ingest into a new index folder"
            )
        self._generation = int(self._meta("generation"))
        self._saved_generation = -1
        self._tombstones = {r[0] for r in self._db.execute("SELECT id FROM chunks WHERE deleted = 1")}
        self._selector: tuple[faiss.IDSelector, faiss.IDSelector] | None = None
        self._graph = self._load_graph()
        if self._graph is None:
            self.rebuild()
        else:
            self._saved_generation = self._generation

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes -------------------------------------------------------------------------------

    def add_document(
        self, path: str, sha256: str, chunks: list[Chunk], vectors: np.ndarray, chunk_hashes: list[str]
    ) -> list[int]:
        """Store a document's chunks, their unit-length ``vectors`` and cache keys; return chunk ids.

        The document must not be indexed already (``remove_document`` it first).
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(chunks), self.dim) or len(chunk_hashes) != len(chunks):
            raise ValueError(
                f"{len(chunks)} chunks need ({len(chunks)}, {self.dim}) vectors and as many hashes, "
                f"got {vectors.shape} and {len(chunk_hashes)}"
            )
        with self._lock:
            if self.document_sha(path) is not None:
                raise ValueError(f"{path} is already indexed; remove_document it first")
            with self._db:
                ids = [
                    self._db.execute(
                        "INSERT INTO chunks (path, start_line, end_line, text, chunk_hash, vector) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (path, c.start_line, c.end_line, c.text, h, v.tobytes()),
                    ).lastrowid
                    for c, h, v in zip(chunks, chunk_hashes, vectors)
                ]
                self._db.execute(
                    "INSERT INTO documents VALUES (?, ?, ?, ?)", (path, sha256, len(chunks), time.time())
                )
                self._bump_generation()
            if ids:
                self._graph.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
            return ids

    def remove_document(self, path: str) -> list[str]:
        """Forget a document; return the cache keys of its chunks (in order) so their KV can be dropped."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, chunk_hash FROM chunks WHERE path = ? AND deleted = 0 ORDER BY id", (path,)
            ).fetchall()
            with self._db:
                self._db.execute("UPDATE chunks SET deleted = 1 WHERE path = ?", (path,))
                gone = self._db.execute("DELETE FROM documents WHERE path = ?", (path,)).rowcount
                if gone or rows:
                    self._bump_generation()
            self._tombstones.update(r[0] for r in rows)
            self._selector = None
            if len(self._tombstones) > REBUILD_FRACTION * self._graph.ntotal:
                self.rebuild()
            return [r[1] for r in rows]

    def rebuild(self) -> None:
        """Purge tombstoned rows and rebuild the HNSW graph from the live vectors in SQLite, then save."""
        with self._lock:
            with self._db:
                self._db.execute("DELETE FROM chunks WHERE deleted = 1")
                self._bump_generation()
            graph = new_graph(self.dim)
            cursor = self._db.execute("SELECT id, vector FROM chunks ORDER BY id")
            while rows := cursor.fetchmany(4096):
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
                graph.add_with_ids(vectors.reshape(len(rows), self.dim), ids)
            self._graph = graph
            self._tombstones.clear()
            self._selector = None
            self.save()

    def save(self) -> None:
        """Write the HNSW graph to ``index.faiss`` atomically, if it changed since the last save."""
        with self._lock:
            if self._saved_generation == self._generation:
                return
            save_graph(self._faiss_path, self._graph, self._generation)
            self._saved_generation = self._generation

    def close(self) -> None:
        """Save the graph and close the database."""
        with self._lock:
            self.save()
            self._db.close()

    # --- reads --------------------------------------------------------------------------------

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        """The ``k`` live chunks most similar to the unit-length query ``vector``, best first."""
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.dim)
        with self._lock:
            if k <= 0 or self._graph.ntotal == 0:
                return []
            params = faiss.SearchParametersHNSW(efSearch=max(EF_SEARCH, k))
            if self._tombstones:
                if self._selector is None:
                    batch = faiss.IDSelectorBatch(np.fromiter(self._tombstones, dtype=np.int64))
                    self._selector = (batch, faiss.IDSelectorNot(batch))
                params.sel = self._selector[1]
            scores, ids = self._graph.search(query, k, params=params)
            found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
            rows = {
                r[0]: r
                for r in self._db.execute(
                    "SELECT id, path, start_line, end_line, text, chunk_hash FROM chunks "
                    f"WHERE deleted = 0 AND id IN ({','.join('?' * len(found))})",
                    [i for i, _ in found],
                )
            }
        return [Hit(i, s, *rows[i][1:]) for i, s in found if i in rows]

    def vectors(self, ids: list[int]) -> np.ndarray:
        """The stored unit-length embeddings of chunks ``ids`` (from ``Hit.id``), one row each."""
        with self._lock:
            return np.stack([self._graph.reconstruct(i) for i in ids]) if ids else np.zeros((0, self.dim))

    def document_sha(self, path: str) -> str | None:
        """The sha256 the document at ``path`` had when indexed, or ``None`` if it is not indexed."""
        with self._lock:
            row = self._db.execute("SELECT sha256 FROM documents WHERE path = ?", (path,)).fetchone()
        return row[0] if row else None

    def documents(self) -> list[str]:
        """Paths of all indexed documents, sorted."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT path FROM documents ORDER BY path")]

    def live_chunks(self) -> list[Hit]:
        """Every live chunk (score 0), in document order."""
        with self._lock:
            rows = self._db.execute("SELECT id, path, start_line, end_line, text, chunk_hash FROM chunks "
                                    "WHERE deleted = 0 ORDER BY path, start_line, id").fetchall()
        return [Hit(r[0], 0.0, *r[1:]) for r in rows]

    def document_chunk_hashes(self, path: str) -> list[str]:
        """Cache keys of the live chunks of one document, in document order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT chunk_hash FROM chunks WHERE path = ? AND deleted = 0 ORDER BY start_line, id", (path,))
            return [r[0] for r in rows]

    def chunk_hashes_in_use(self) -> set[str]:
        """Cache keys of all live chunks: any other cached chunk KV is garbage."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT DISTINCT chunk_hash FROM chunks WHERE deleted = 0")}

    def __len__(self) -> int:
        """Number of live chunks."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM chunks WHERE deleted = 0").fetchone()[0]

    def verify(self) -> list[str]:
        """Check that the in-memory graph and SQLite agree; return the problems found (none: ``[]``)."""
        problems: list[str] = []
        with self._lock:
            rows = self._db.execute("SELECT id, deleted, vector FROM chunks ORDER BY id").fetchall()
            graph_ids = set(faiss.vector_to_array(self._graph.id_map).tolist())
            db_ids = {r[0] for r in rows}
            if self._graph.ntotal != len(rows) or graph_ids != db_ids:
                problems.append(
                    f"graph holds {self._graph.ntotal} vectors, database {len(rows)} chunks; "
                    f"{len(graph_ids - db_ids)} ids only in the graph, {len(db_ids - graph_ids)} only in the database"
                )
            if self._tombstones != {r[0] for r in rows if r[1]}:
                problems.append("tombstones differ from the chunks marked deleted")
            for chunk_id, _, blob in rows:
                if len(blob) != 4 * self.dim:
                    problems.append(f"chunk {chunk_id}: vector blob of {len(blob)} bytes, expected {4 * self.dim}")
                elif chunk_id in graph_ids and not np.array_equal(
                    self._graph.reconstruct(chunk_id), np.frombuffer(blob, dtype=np.float32)
                ):
                    problems.append(f"chunk {chunk_id}: vector in the graph differs from the database")
            for path, expected, live in self._db.execute(
                "SELECT d.path, d.n_chunks, (SELECT COUNT(*) FROM chunks c WHERE c.path = d.path "
                "AND c.deleted = 0) FROM documents d"
            ):
                if expected != live:
                    problems.append(f"{path}: documents says {expected} chunks, {live} live in chunks")
            for (path,) in self._db.execute(
                "SELECT DISTINCT path FROM chunks WHERE deleted = 0 AND path NOT IN (SELECT path FROM documents)"
            ):
                problems.append(f"{path}: live chunks without a document row")
        return problems

    # --- internals ----------------------------------------------------------------------------

    def _meta(self, key: str) -> str:
        return self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    def _bump_generation(self) -> None:
        """Advance the generation inside the caller's transaction, so the graph file reads as stale."""
        self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        self._generation = int(self._meta("generation"))

    def _load_graph(self) -> faiss.IndexIDMap2 | None:
        """The saved graph if it matches the database exactly, else ``None`` (with the reason logged)."""
        n_rows = self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        try:
            return load_graph(self._faiss_path, self._generation, n_rows, self.dim)
        except FileNotFoundError:
            reason = "missing"
            if n_rows == 0:
                return None  # a new index: nothing to report
        except UnusableGraph as err:
            reason = str(err)
        log.warning("%s is %s; rebuilding it from %s", self._faiss_path, reason, self.root / "meta.sqlite")
        return None
