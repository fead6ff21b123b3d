"""Asking questions: citations point at the right file, and chunk caches are reused across questions."""

from __future__ import annotations

from pathlib import Path

import pytest

from app_helpers import FACT, OTHER_QUESTION, QUESTION, record_files, run_cli


def test_pristine_ingest_precomputed_every_chunk(pristine) -> None:
    r = pristine.report
    assert (r.files_seen, r.files_added, r.files_skipped) == (4, 4, 0)
    n_chunks = sum(len(h) for h in pristine.hashes.values())
    assert r.chunks_added == n_chunks
    records = record_files(pristine.store)
    assert {p.parent.name for p in records} == {h for hs in pristine.hashes.values() for h in hs}
    assert all(p.name == "isolated.safetensors" for p in records)


@pytest.mark.parametrize("strategy", ["full", "cachecraft"])
def test_answer_cites_the_file_holding_the_fact(shared_engine, pristine, strategy: str) -> None:
    ans = shared_engine.ask(QUESTION, strategy=strategy)
    assert len(ans.citations) == 3
    assert Path(ans.citations[0].path) == (pristine.corpus / "zorblat.md").resolve()
    assert ans.citations[0].start_line == 1
    assert ans.citations[0].score > max(c.score for c in ans.citations[1:])
    assert FACT in ans.text.lower(), ans.text
    assert ans.stats["strategy"] == strategy


def test_second_question_reuses_the_chunk_caches(store_copy, open_engine) -> None:
    store = store_copy()
    eng = open_engine(store, k=3)
    before = eng.kv.stats()
    records_before = record_files(store)
    for question in (QUESTION, OTHER_QUESTION):
        s = eng.ask(question).stats
        # ingest precomputed every chunk, so even the first question hits
        assert (s["chunks_hit"], s["chunks_missed"]) == (3, 0), (question, s)
        assert s["tokens_reused"] > 0, s
        assert s["tokens_recomputed"] < s["context_tokens"], s
    after = eng.kv.stats()
    assert after["misses"] == before["misses"]
    assert after["hits"] > before["hits"]
    # nothing had to be captured: no record was added or rewritten
    assert record_files(store) == records_before


def test_after_cache_clear_first_ask_misses_then_second_hits(store_copy, open_engine, pristine) -> None:
    store = store_copy()
    n_records = len(record_files(store))
    proc = run_cli("cache", "clear", "--store", store)
    assert proc.returncode == 0, proc.stderr
    assert f"removed {n_records} records" in proc.stdout
    assert record_files(store) == {}

    k = sum(len(h) for h in pristine.hashes.values())  # every chunk: both questions see the same ones
    eng = open_engine(store, k=k)
    first = eng.ask(QUESTION)
    s = first.stats
    assert (s["chunks_hit"], s["chunks_missed"]) == (0, k), s
    assert s["tokens_reused"] == 0, s
    # the missed chunks' in-context states were captured as records
    cached = {p.parent.name for p in record_files(store)}
    assert cached == {h for hs in pristine.hashes.values() for h in hs}

    second = eng.ask(OTHER_QUESTION)
    s = second.stats
    assert (s["chunks_hit"], s["chunks_missed"]) == (k, 0), s
    assert s["tokens_reused"] > 0, s
    assert {c.path for c in first.citations} == {c.path for c in second.citations}

    # and another Engine (own memory tier, so from disk) hits too
    again = open_engine(store, k=k).ask(OTHER_QUESTION).stats
    assert (again["chunks_hit"], again["chunks_missed"]) == (k, 0), again
