"""Incremental ingestion with the real embedder, faiss, SQLite and files."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import sys
from pathlib import Path

import pytest

from chunkcache.rag import IngestReport, VectorIndex, document_key, ingest

KEYS = "# Keys\n\nRotate API keys every ninety days with the rotate-keys command.\n\n" + "\n\n".join(
    f"Rotation step {i}: revoke the old key, issue a new one and update client {i}." for i in range(12)
)
BACKUPS = "Nightly backups go to object storage.\n\nThey are kept for thirty days and restored with restore.\n"
CODE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"


def chunk_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Recorder:
    """Collects what ingestion tells the engine."""

    def __init__(self) -> None:
        self.removed: list[str] = []
        self.precomputed: list[tuple[str, str]] = []

    def run(self, paths: list[Path], index: VectorIndex, embedder, count_tokens) -> IngestReport:
        return ingest(
            paths, index, embedder, count_tokens, chunk_key, self.removed.append,
            precompute=self.precomputed.extend, max_tokens=64, progress=False,
        )  # fmt: skip


def live_chunks(index: VectorIndex) -> dict[str, list[tuple[int, str]]]:
    """path → [(chunk id, chunk hash)] of live chunks, read straight from the database."""
    out: dict[str, list[tuple[int, str]]] = {}
    with sqlite3.connect(index.root / "meta.sqlite") as db:
        for path, cid, h in db.execute("SELECT path, id, chunk_hash FROM chunks WHERE deleted = 0 ORDER BY id"):
            out.setdefault(path, []).append((cid, h))
    return out


@pytest.fixture
def corpus(write, tmp_path: Path) -> Path:
    write("docs/keys.md", KEYS)
    write("docs/ops/backups.txt", BACKUPS)
    write("docs/src/math.py", CODE)
    write("docs/blob.txt", b"\x00\x01binary\x00")
    write("docs/empty.md", "")
    return tmp_path / "docs"


@pytest.fixture
def index(tmp_path: Path, embedder) -> VectorIndex:
    return VectorIndex(tmp_path / "store", embedder.dim)


def test_first_run_indexes_everything_and_skips_unusable_files(
    corpus, index, counting_embedder, count_tokens, caplog, embedder
):
    rec = Recorder()
    with caplog.at_level(logging.WARNING, logger="chunkcache.rag"):
        report = rec.run([corpus], index, counting_embedder, count_tokens)
    assert (report.files_seen, report.files_added, report.files_skipped) == (5, 3, 2)
    assert "blob.txt" in caplog.text and "empty.md" in caplog.text
    chunks = live_chunks(index)
    assert sorted(chunks) == sorted(document_key(corpus / p) for p in ("keys.md", "ops/backups.txt", "src/math.py"))
    assert len(chunks[document_key(corpus / "keys.md")]) > 1  # the 64-token budget split it
    assert report.chunks_added == sum(map(len, chunks.values())) == len(counting_embedder.texts)
    # precompute got every chunk once, keyed by the hash of the exact LLM text, header first
    assert sorted(h for h, _ in rec.precomputed) == sorted(h for v in chunks.values() for _, h in v)
    for h, text in rec.precomputed:
        assert chunk_key(text) == h and text.startswith(f"[{corpus.resolve()}/")
    hit = index.search(embedder.embed(["how do I restore from a backup?"])[0], 1)[0]
    assert hit.path == document_key(corpus / "ops/backups.txt")
    assert (hit.chunk_hash, hit.llm_text) in rec.precomputed
    assert rec.removed == [] and index.verify() == []


def test_second_run_embeds_nothing(corpus, index, counting_embedder, count_tokens):
    Recorder().run([corpus], index, counting_embedder, count_tokens)
    before = live_chunks(index)
    counting_embedder.texts.clear()
    rec = Recorder()
    report = rec.run([corpus], index, counting_embedder, count_tokens)
    assert counting_embedder.texts == []
    assert (report.files_unchanged, report.files_added, report.files_updated, report.chunks_added) == (3, 0, 0, 0)
    assert rec.removed == [] and rec.precomputed == []
    assert live_chunks(index) == before


def test_editing_one_file_changes_only_its_chunks(corpus, index, counting_embedder, count_tokens):
    Recorder().run([corpus], index, counting_embedder, count_tokens)
    before = live_chunks(index)
    keys = document_key(corpus / "keys.md")
    (corpus / "keys.md").write_text(KEYS.replace("update client 11", "notify the owners of client 11"))
    counting_embedder.texts.clear()
    rec = Recorder()
    report = rec.run([corpus], index, counting_embedder, count_tokens)
    after = live_chunks(index)
    assert (report.files_updated, report.files_unchanged) == (1, 2)
    assert {p: v for p, v in after.items() if p != keys} == {p: v for p, v in before.items() if p != keys}
    old_hashes, new_hashes = {h for _, h in before[keys]}, {h for _, h in after[keys]}
    assert rec.removed == sorted(old_hashes - new_hashes) and rec.removed  # only caches no chunk uses any more
    assert {h for h, _ in rec.precomputed} == new_hashes - old_hashes
    assert len(counting_embedder.texts) == len(after[keys]) == report.chunks_added
    assert report.chunks_removed == len(before[keys])
    assert index.verify() == []


def test_deleted_and_emptied_files_are_removed(corpus, index, counting_embedder, count_tokens):
    Recorder().run([corpus], index, counting_embedder, count_tokens)
    before = live_chunks(index)
    (corpus / "ops" / "backups.txt").unlink()
    (corpus / "src" / "math.py").write_text("   \n")
    rec = Recorder()
    report = rec.run([corpus], index, counting_embedder, count_tokens)
    gone = [document_key(corpus / "ops/backups.txt"), document_key(corpus / "src/math.py")]
    assert (report.files_removed, report.files_unchanged) == (2, 1)
    assert sorted(rec.removed) == sorted(h for g in gone for _, h in before[g])
    assert index.documents() == [document_key(corpus / "keys.md")]
    assert index.verify() == []


def test_documents_outside_the_given_paths_are_left_alone(corpus, index, counting_embedder, count_tokens, write):
    other = write("other/notes.md", "Unrelated notes about the office coffee machine.")
    Recorder().run([other], index, counting_embedder, count_tokens)
    rec = Recorder()
    rec.run([corpus], index, counting_embedder, count_tokens)
    assert document_key(other) in index.documents()
    assert rec.removed == []


def test_missing_path_fails_before_touching_the_index(corpus, index, counting_embedder, count_tokens):
    Recorder().run([corpus], index, counting_embedder, count_tokens)
    before = live_chunks(index)
    with pytest.raises(FileNotFoundError, match="nope"):
        Recorder().run([corpus, corpus / "nope"], index, counting_embedder, count_tokens)
    assert live_chunks(index) == before


def test_index_survives_reopen_after_ingest(corpus, index, counting_embedder, count_tokens, embedder):
    Recorder().run([corpus], index, counting_embedder, count_tokens)
    [query] = embedder.embed(["subtract two numbers"])
    expected = [(h.id, h.path) for h in index.search(query, 3)]
    index.close()
    reopened = VectorIndex(index.root, embedder.dim)
    assert [(h.id, h.path) for h in reopened.search(query, 3)] == expected
    assert expected[0][1] == document_key(corpus / "src/math.py")


def test_progress_bars_only_on_a_terminal(corpus, index, counting_embedder, count_tokens, capsys, monkeypatch):
    def run(progress: bool) -> str:
        ingest([corpus], index, counting_embedder, count_tokens, chunk_key, lambda h: None,
               precompute=lambda pairs: None, progress=progress)  # fmt: skip
        return capsys.readouterr().err

    assert run(progress=True) == ""  # stderr is captured here, not a terminal
    (corpus / "keys.md").write_text(KEYS + "\n\nOne more step.")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert run(progress=False) == ""
    (corpus / "keys.md").write_text(KEYS + "\n\nYet another step.")
    err = run(progress=True)
    assert all(bar in err for bar in ("files", "chunks", "caches")), err
