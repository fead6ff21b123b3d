"""Damage and crashes: corrupted records are detected and recomputed, a killed ingest leaves a usable store."""

from __future__ import annotations

import logging
import shutil
import signal
import time
from pathlib import Path

import pytest

from app_helpers import QUESTION, corrupt, popen_cli, record_dir, record_files, run_cli, write_corpus


def test_corrupted_record_is_detected_recomputed_and_answer_unchanged(
    store_copy, open_engine, pristine, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_copy()
    before = open_engine(store).ask(QUESTION)
    assert before.stats["chunks_missed"] == 0
    target_hash = pristine.hashes["zorblat.md"][0]
    target = record_dir(store, target_hash) / "isolated.safetensors"
    corrupt(target)

    eng = open_engine(store)  # a new Engine: its memory tier has not seen the good record
    corrupt_before = eng.kv.stats()["corrupt"]
    with caplog.at_level(logging.WARNING):
        after = eng.ask(QUESTION)
    assert Path(after.citations[0].path).name == "zorblat.md"
    s = after.stats
    assert (s["chunks_hit"], s["chunks_missed"]) == (2, 1), s
    assert eng.kv.stats()["corrupt"] == corrupt_before + 1
    assert any(str(target) in r.getMessage() for r in caplog.records), caplog.text
    assert after.text == before.text
    assert after.stats["strategy"] == before.stats["strategy"]

    # the chunk got a fresh, valid record, and the next question reuses it
    assert target_hash in eng.kv
    v = eng.cache_verify()
    assert (v["records_removed"], v["index_problems"]) == ([], [])
    s = open_engine(store).ask(QUESTION).stats
    assert (s["chunks_hit"], s["chunks_missed"]) == (3, 0), s


def test_cli_cache_verify_reports_and_removes_a_corrupted_record(store_copy, pristine) -> None:
    store = store_copy()
    files = record_files(store)
    target = record_dir(store, pristine.hashes["trains.md"][0]) / "isolated.safetensors"
    assert target in files
    corrupt(target)

    proc = run_cli("cache", "verify", "--store", store)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{len(files) - 1} records ok, 1 bad removed", proc.stdout
    assert f"  removed {target}" in lines, proc.stdout
    assert not any("index:" in line for line in lines), proc.stdout
    assert not target.exists()
    assert set(record_files(store)) == set(files) - {target}


# --- a killed ingest ------------------------------------------------------------------------------

N_FILES = 8


def _station_report(i: int) -> str:
    lines = [f"# Weather station {i}", ""]
    lines += [f"Station {i} in the valley of Orn-{i} recorded {10 + (7 * j + i) % 23} millimetres of rain "
              f"and a wind of {3 + (5 * j + i) % 17} knots on day {j + 1}." for j in range(16)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def killed_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(corpus, store) of a `chunkcache ingest` killed with SIGKILL while it was writing records."""
    base = tmp_path_factory.mktemp("killed")
    corpus = write_corpus(base / "corpus", {f"station{i:02d}.md": _station_report(i) for i in range(N_FILES)})
    store = base / "store"
    proc = popen_cli("ingest", corpus, "--store", store)
    records = store / "kv" / "records"
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if records.is_dir() and any(records.glob("*/*/*.safetensors")):
                break
            time.sleep(0.01)
        still_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert still_running, f"ingest ended (rc {proc.returncode}) before it could be killed:\n{out}\n{err}"
    assert proc.returncode == -signal.SIGKILL
    return corpus, store


def _copy(killed: tuple[Path, Path], tmp_path: Path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(killed[1], dst)
    return dst


def test_killed_ingest_leaves_a_store_that_verifies_and_recovers(killed_store, tmp_path, open_engine) -> None:
    corpus, _ = killed_store
    store = _copy(killed_store, tmp_path)
    eng = open_engine(store)
    n_chunks = len(eng.index)
    # the kill came while caches were being precomputed (index saved, records partly written)
    assert len(eng.index.documents()) == N_FILES
    assert 0 < len(record_files(store)) < n_chunks, "the kill did not land in the middle of precompute"

    v = eng.cache_verify()
    assert v["index_problems"] == []
    assert v["records_removed"] == []

    report = eng.ingest([corpus], progress=False)
    assert (report.files_seen, report.files_unchanged, report.files_skipped) == (N_FILES, N_FILES, 0), report
    ans = eng.ask("How much rain did station 7 record on day 3?")
    assert ans.citations
    assert ans.stats["new_tokens"] > 0 and ans.text
    assert eng.cache_verify() == {"records_ok": len(record_files(store)), "records_removed": [],
                                  "index_problems": []}


def test_reingest_after_killed_ingest_precomputes_the_missing_caches(killed_store, tmp_path, open_engine) -> None:
    """Re-running the interrupted ingest must leave the store as an uninterrupted one would: every chunk cached."""
    corpus, _ = killed_store
    store = _copy(killed_store, tmp_path)
    eng = open_engine(store)
    eng.ingest([corpus], progress=False)
    docs = eng.cache_stats()["documents"]
    assert len(docs) == N_FILES
    uncached = {doc: d for doc, d in docs.items() if d["cached"] != d["chunks"]}
    assert not uncached, f"chunks left without a cache after re-ingest: {uncached}"
