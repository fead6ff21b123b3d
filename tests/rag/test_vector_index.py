"""The vector index: search, tombstones, rebuild, persistence, recovery of the faiss file from SQLite."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from chunkcache.rag import Chunk, Embedder, VectorIndex, llm_text

DIM = 384


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def add_doc(index: VectorIndex, name: str, n: int, seed: int) -> np.ndarray:
    """Add document ``name`` with ``n`` random chunks; return their vectors."""
    vectors = unit_vectors(n, seed)
    chunks = [Chunk(f"{name} chunk {i}", i + 1, i + 1) for i in range(n)]
    index.add_document(name, f"sha-{name}", chunks, vectors, [f"{name}#{i}" for i in range(n)])
    return vectors


@pytest.fixture
def filled(tmp_path: Path) -> tuple[VectorIndex, dict[str, np.ndarray]]:
    """An index with ten documents of four chunks each."""
    index = VectorIndex(tmp_path / "idx", DIM)
    vectors = {f"doc{d}": add_doc(index, f"doc{d}", 4, seed=d) for d in range(10)}
    return index, vectors


def top(index: VectorIndex, vector: np.ndarray, k: int = 5) -> list[tuple[int, str]]:
    return [(h.id, h.path) for h in index.search(vector, k)]


def deleted_rows(root: Path) -> int:
    with sqlite3.connect(root / "meta.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM chunks WHERE deleted = 1").fetchone()[0]


def test_paraphrased_query_finds_the_right_document(tmp_path, embedder: Embedder):
    docs = {
        "keys.md": "Rotate API keys every ninety days with the rotate-keys command.",
        "backup.md": "Nightly backups are written to object storage and kept for a month.",
        "style.md": "Use four spaces for indentation and keep lines under one hundred characters.",
    }
    index = VectorIndex(tmp_path / "idx", embedder.dim)
    for path, text in docs.items():
        index.add_document(path, "sha", [Chunk(text, 1, 1)], embedder.embed([text]), [path + "#0"])
    [query] = embedder.embed(["how often should credentials be changed?"])
    hits = index.search(query, 3)
    assert [h.path for h in hits][0] == "keys.md"
    assert hits[0].score > hits[1].score >= hits[2].score
    best = hits[0]
    assert (best.text, best.start_line, best.end_line, best.chunk_hash) == (docs["keys.md"], 1, 1, "keys.md#0")
    assert best.llm_text == llm_text("keys.md", best.chunk) == f"[keys.md:1-1]\n{docs['keys.md']}"


def test_search_returns_exact_match_first_and_respects_k(filled):
    index, vectors = filled
    hits = index.search(vectors["doc3"][2], 7)
    assert len(hits) == 7
    assert (hits[0].path, hits[0].text) == ("doc3", "doc3 chunk 2")
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert index.search(vectors["doc3"][2], 0) == []


def test_remove_document_tombstones_and_never_returns_it(filled):
    index, vectors = filled
    removed = index.remove_document("doc3")
    assert removed == [f"doc3#{i}" for i in range(4)]
    assert deleted_rows(index.root) == 4  # 10% tombstones: kept until a rebuild
    for v in vectors["doc3"]:
        assert all(path != "doc3" for _, path in top(index, v, k=40))
    assert len(index.search(vectors["doc3"][0], 36)) == 36  # tombstones take no result slots
    assert "doc3" not in index.documents() and index.document_sha("doc3") is None
    assert not any(h.startswith("doc3#") for h in index.chunk_hashes_in_use())
    assert index.remove_document("doc3") == []
    assert index.verify() == []


def test_a_second_open_index_never_returns_chunks_removed_through_the_first(filled):
    index, vectors = filled
    index.save()
    reader = VectorIndex(index.root, DIM)  # e.g. a server process while the CLI ingests
    index.remove_document("doc8")
    assert all(path != "doc8" for _, path in top(reader, vectors["doc8"][0], k=40))


def test_tombstones_over_a_fifth_trigger_a_rebuild(filled):
    index, vectors = filled
    for name in ("doc0", "doc1"):
        index.remove_document(name)
    assert deleted_rows(index.root) == 8  # 20%: not over the threshold yet
    index.remove_document("doc2")
    assert deleted_rows(index.root) == 0  # purged by the rebuild
    assert len(index) == 28
    assert top(index, vectors["doc5"][1], 1)[0][1] == "doc5"
    assert index.verify() == []


def test_explicit_rebuild_keeps_results(filled):
    index, vectors = filled
    index.remove_document("doc4")
    before = [top(index, v) for v in vectors["doc6"]]
    index.rebuild()
    assert [top(index, v) for v in vectors["doc6"]] == before
    assert deleted_rows(index.root) == 0 and index.verify() == []


def test_reopen_restores_documents_tombstones_and_results(filled):
    index, vectors = filled
    index.remove_document("doc7")
    before = [top(index, v) for d in ("doc1", "doc7") for v in vectors[d]]
    index.close()
    reopened = VectorIndex(index.root, DIM)
    assert [top(reopened, v) for d in ("doc1", "doc7") for v in vectors[d]] == before
    assert reopened.documents() == sorted(f"doc{d}" for d in range(10) if d != 7)
    assert reopened.document_sha("doc1") == "sha-doc1"
    assert reopened.verify() == []


@pytest.mark.parametrize("damage", ["delete", "truncate", "flip_byte", "garbage"])
def test_damaged_faiss_file_is_rebuilt_from_sqlite(filled, caplog, damage):
    index, vectors = filled
    index.remove_document("doc2")
    before = [top(index, v) for d in ("doc0", "doc2", "doc9") for v in vectors[d]]
    index.close()
    path = index.root / "index.faiss"
    data = path.read_bytes()
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":
        at = len(data) - 2000  # inside the stored vectors, just before the id map
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x80]) + data[at + 1 :])
    else:
        path.write_bytes(b"not a faiss index at all")
    with caplog.at_level(logging.WARNING, logger="chunkcache.rag"):
        reopened = VectorIndex(index.root, DIM)
    assert "rebuilding" in caplog.text
    assert [top(reopened, v) for d in ("doc0", "doc2", "doc9") for v in vectors[d]] == before
    assert reopened.verify() == []
    reopened.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="chunkcache.rag"):
        VectorIndex(index.root, DIM).close()  # the rebuilt file was saved: no second rebuild
    assert "rebuilding" not in caplog.text


def test_stale_faiss_file_after_a_crash_is_rebuilt(filled, caplog):
    index, vectors = filled
    index.save()
    old_file = (index.root / "index.faiss").read_bytes()
    new = add_doc(index, "late", 3, seed=99)
    index.close()
    (index.root / "index.faiss").write_bytes(old_file)  # as if killed after the SQLite commit, before the save
    with caplog.at_level(logging.WARNING, logger="chunkcache.rag"):
        reopened = VectorIndex(index.root, DIM)
    assert "stale" in caplog.text
    assert top(reopened, new[0], 1)[0][1] == "late"
    assert reopened.verify() == []


def test_verify_reports_a_database_edited_behind_its_back(filled):
    index, _ = filled
    assert index.verify() == []
    with sqlite3.connect(index.root / "meta.sqlite") as db:
        db.execute("DELETE FROM chunks WHERE path = 'doc5' AND start_line = 1")
    problems = index.verify()
    assert any("only in the graph" in p for p in problems)
    assert any("doc5" in p for p in problems)


def test_rejects_bad_input_and_a_dimension_change(filled):
    index, _ = filled
    with pytest.raises(ValueError, match="already indexed"):
        add_doc(index, "doc1", 2, seed=5)
    with pytest.raises(ValueError, match="vectors"):
        index.add_document("new", "sha", [Chunk("t", 1, 1)], unit_vectors(2, 0), ["h"])
    index.close()
    with pytest.raises(ValueError, match="embedding model changed"):
        VectorIndex(index.root, 128)


def test_empty_index_searches_to_nothing(tmp_path):
    index = VectorIndex(tmp_path / "idx", DIM)
    assert index.search(unit_vectors(1, 0)[0], 5) == []
    assert index.documents() == [] and index.chunk_hashes_in_use() == set()
    assert index.verify() == []
