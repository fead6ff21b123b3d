"""Editing a file invalidates exactly its chunks: index rows and record files of the others stay put."""

from __future__ import annotations

from pathlib import Path

import pytest

from app_helpers import CORPUS, record_dir, record_files, write_corpus


def test_editing_a_file_invalidates_exactly_its_chunks(tmp_path: Path, open_engine) -> None:
    corpus = write_corpus(tmp_path / "corpus", {k: CORPUS[k] for k in ("zorblat.md", "cooking.md", "trains.md")})
    store = tmp_path / "store"
    eng = open_engine(store)
    first = eng.ingest([corpus], progress=False)
    assert (first.files_added, first.files_skipped) == (3, 0)

    docs = {Path(d).name: d for d in eng.index.documents()}
    assert set(docs) == {"zorblat.md", "cooking.md", "trains.md"}
    old = {name: eng.index.document_chunk_hashes(d) for name, d in docs.items()}
    assert all(old.values())
    files_before = record_files(store)
    by_chunk = {p.parent.name for p in files_before}
    assert by_chunk == {h for hs in old.values() for h in hs}, "ingest did not precompute every chunk"

    edited = corpus / "cooking.md"
    edited.write_text(edited.read_text().replace("ten minutes", "eleven minutes"), encoding="utf-8")
    report = eng.ingest([corpus], progress=False)

    assert (report.files_seen, report.files_updated, report.files_unchanged) == (3, 1, 2), report
    assert (report.files_added, report.files_removed, report.files_skipped) == (0, 0, 0), report
    assert report.chunks_removed == len(old["cooking.md"]), report

    new = {name: eng.index.document_chunk_hashes(d) for name, d in docs.items()}
    in_use = eng.index.chunk_hashes_in_use()
    # the edited file's old chunks are gone from the index and from disk ...
    assert not set(old["cooking.md"]) & set(new["cooking.md"])
    assert not set(old["cooking.md"]) & in_use
    for h in old["cooking.md"]:
        assert not record_dir(store, h).exists(), f"record of removed chunk {h} still on disk"
        assert h not in eng.kv
    # ... its new chunks are indexed and precomputed ...
    assert report.chunks_added == len(new["cooking.md"])
    for h in new["cooking.md"]:
        assert (record_dir(store, h) / "isolated.safetensors").is_file()
    # ... and the other files' chunks and record files are untouched
    files_after = record_files(store)
    for name in ("zorblat.md", "trains.md"):
        assert new[name] == old[name]
        kept = {p: m for p, m in files_before.items() if p.parent.name in old[name]}
        assert kept
        assert {p: files_after.get(p) for p in kept} == kept, f"records of {name} were rewritten or removed"
    assert set(files_after) == {p for p in files_before if p.parent.name not in old["cooking.md"]} | {
        record_dir(store, h) / "isolated.safetensors" for h in new["cooking.md"]}
    assert eng.cache_verify()["index_problems"] == []


def test_removing_a_document_drops_its_vectors_and_records(tmp_path: Path, open_engine) -> None:
    corpus = write_corpus(tmp_path / "corpus", {k: CORPUS[k] for k in ("zorblat.md", "trains.md")})
    store = tmp_path / "store"
    eng = open_engine(store)
    eng.ingest([corpus], progress=False)
    gone_doc, kept_doc = (str((corpus / n).resolve()) for n in ("zorblat.md", "trains.md"))
    hashes = eng.index.document_chunk_hashes(gone_doc)
    kept = eng.index.document_chunk_hashes(kept_doc)
    removed = eng.remove_document(corpus / "zorblat.md")
    assert sorted(removed) == sorted(set(hashes))
    assert eng.index.documents() == [kept_doc]
    assert all(h not in eng.reuse.store and not record_dir(store, h).exists() for h in hashes)
    assert all(h in eng.kv for h in kept)
    assert all(Path(hit.path).name == "trains.md" for hit in eng.retrieve("zorblat", k=5))
    with pytest.raises(KeyError, match="zorblat.md"):
        eng.remove_document(corpus / "zorblat.md")
