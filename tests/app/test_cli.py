"""The `chunkcache` command line, run as a subprocess: skipped files, errors, --json, cache stats."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from app_helpers import (FACT, MAX_NEW_TOKENS, QUESTION, assert_clean_error, record_files, run_cli,
                         write_corpus)
from chunkcache.api import Engine
from chunkcache.strategies import DEFAULT_STRATEGY

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --- unusable files are skipped with a warning -----------------------------------------------------

def test_unreadable_binary_and_empty_files_are_skipped_with_a_warning(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "docs", {
        "good.md": "# Owls\n\nThe snowy owl hunts lemmings on the open tundra.\n",
        "empty.md": "",
        "blank.txt": "   \n\n\t\n",
        "binary.md": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x01",
        "latin1.txt": "caf\xe9 cr\xe8me\n".encode("latin-1"),
    })
    (folder / "dangling.md").symlink_to(tmp_path / "does-not-exist.md")  # listed, but cannot be read
    bad = ["empty.md", "blank.txt", "binary.md", "latin1.txt", "dangling.md"]
    if not IS_ROOT:  # root reads any file whatever its mode
        locked = folder / "locked.md"
        locked.write_text("secret\n")
        locked.chmod(0)
        bad.append("locked.md")
    photo = tmp_path / "photo.png"  # named explicitly: an unsupported type
    photo.write_bytes(b"\x89PNG\r\n\x1a\n")
    bad.append("photo.png")

    proc = run_cli("ingest", folder, photo, "--store", tmp_path / "store")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert f"files: {len(bad) + 1} seen, 1 added," in proc.stdout, proc.stdout
    assert f"{len(bad)} skipped" in proc.stdout, proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "skipping" in line]
    for name in bad:
        assert any(name in line for line in warnings), f"no warning naming {name}:\n{proc.stderr}"
    assert not any("good.md" in line for line in warnings)
    assert len(record_files(tmp_path / "store")) == 1  # good.md's one chunk was precomputed


# --- bad input: one `error: ...` line and a non-zero exit -------------------------------------------

def test_ingest_of_a_missing_path_is_an_error(tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = run_cli("ingest", tmp_path / "nope.md", "--store", store)
    assert_clean_error(proc, "nope.md", "does not exist")
    assert not store.exists()


@pytest.mark.parametrize("question", ["", "   "])
def test_ask_with_an_empty_question_is_an_error(store_copy, question: str) -> None:
    proc = run_cli("ask", question, "--store", store_copy())
    assert_clean_error(proc, "question is empty")


def test_ask_with_k_zero_is_an_error(store_copy) -> None:
    assert_clean_error(run_cli("ask", QUESTION, "-k", "0", "--store", store_copy()), "-k")


def test_ask_on_a_store_without_documents_is_an_error(tmp_path: Path) -> None:
    proc = run_cli("ask", QUESTION, "--store", tmp_path / "empty", "--max-new-tokens", "4")
    assert_clean_error(proc, "no documents", "chunkcache ingest")


@pytest.mark.parametrize("command", ["ask", "ingest"])
def test_store_made_by_another_model_is_an_error(store_copy, pristine, command: str) -> None:
    store = store_copy()
    manifest = (store / "store.json").read_text()
    records = record_files(store)
    args = [QUESTION, "--max-new-tokens", MAX_NEW_TOKENS] if command == "ask" else [pristine.corpus]
    proc = run_cli(command, *args, "--model", "gemma3", "--store", store)
    line = assert_clean_error(proc, "gemma3", "--model")
    assert "smollm2" in line or "default" in line, line
    assert (store / "store.json").read_text() == manifest
    assert record_files(store) == records


@pytest.mark.parametrize("command", ["ingest", "ask", "cache"])
def test_store_whose_parent_is_a_file_is_an_error(tmp_path: Path, pristine, command: str) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file\n")
    store = blocker / "store"
    args = {"ingest": [pristine.corpus], "ask": [QUESTION], "cache": ["stats"]}[command]
    proc = run_cli(command, *args, "--store", store)
    assert_clean_error(proc, str(store), "not writable")
    assert blocker.read_text() == "a regular file\n"


def test_engine_on_a_store_whose_parent_is_a_file_raises_permission_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="not writable"):
        Engine(store=blocker / "store")


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_read_only_store_directory_is_an_error(tmp_path: Path, pristine) -> None:
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o500)
    try:
        proc = run_cli("ingest", pristine.corpus, "--store", store)
    finally:
        store.chmod(0o700)
    assert_clean_error(proc, str(store), "not writable")


# --- output formats ---------------------------------------------------------------------------------

def test_ask_json_prints_one_object_with_answer_citations_stats(store_copy, pristine) -> None:
    proc = run_cli("ask", QUESTION, "--json", "-k", "3", "--max-new-tokens", MAX_NEW_TOKENS,
                   "--store", store_copy(), cwd=pristine.corpus.parent)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert isinstance(out, dict)
    assert set(out) == {"answer", "citations", "stats"}
    assert FACT in out["answer"].lower(), out["answer"]
    assert len(out["citations"]) == 3
    for c in out["citations"]:
        assert set(c) == {"path", "start_line", "end_line", "score"}
        assert 1 <= c["start_line"] <= c["end_line"]
    assert out["citations"][0]["path"] == os.path.join("corpus", "zorblat.md")
    s = out["stats"]
    assert (s["chunks_hit"], s["chunks_missed"]) == (3, 0), s
    assert s["tokens_reused"] > 0 and s["strategy"] == DEFAULT_STRATEGY
    assert 0 < s["new_tokens"] <= MAX_NEW_TOKENS


def _check_stats_output(proc, store: Path, pristine) -> re.Match:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    n_chunks = sum(len(h) for h in pristine.hashes.values())
    m = re.match(r"store (.+): (\d+) records of (\d+) chunks, [\d.]+ MB; lookups (\d+) hits, (\d+) misses "
                 r"\(hit rate (.+)\), (\d+) corrupt$", lines[0])
    assert m, proc.stdout
    assert Path(m[1]) == store
    assert (int(m[2]), int(m[3])) == (len(record_files(store)), n_chunks)
    docs = sorted(lines[1:])
    expected = sorted(f"  {os.path.join('corpus', name)}: {len(h)} chunks, {len(h)} cached"
                      for name, h in pristine.hashes.items())
    assert docs == expected, proc.stdout
    return m


def test_cache_stats_prints_records_and_per_document_counts(store_copy, pristine, open_engine) -> None:
    store = store_copy()
    open_engine(store, k=3, max_new_tokens=4).ask(QUESTION)  # 3 lookups, all disk hits
    proc = run_cli("cache", "stats", "--store", store, cwd=pristine.corpus.parent)
    m = _check_stats_output(proc, store, pristine)
    assert (m[4], m[5], m[6], m[7]) == ("3", "0", "100%", "0"), proc.stdout


def test_cache_stats_on_a_store_never_asked_from(store_copy, pristine) -> None:
    """Right after ingest no lookup has happened yet: the hit rate is undefined, which must not crash."""
    store = store_copy()
    proc = run_cli("cache", "stats", "--store", store, cwd=pristine.corpus.parent)
    assert "Traceback" not in proc.stderr, proc.stderr
    m = _check_stats_output(proc, store, pristine)
    assert (m[4], m[5]) == ("0", "0"), proc.stdout
