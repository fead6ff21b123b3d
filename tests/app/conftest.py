"""Fixtures for the end-to-end tests: the real default model, real faiss index, real files.

Model calls are the expensive part, so one tiny corpus is ingested once per session into a
"pristine" store (then closed, so its SQLite files are checkpointed); tests that change a store
work on a ``shutil.copytree`` of it. The corpus files are never modified: chunk cache keys include
the document's absolute path, so copies of the store stay valid only while the corpus stays put.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from app_helpers import CORPUS, MAX_NEW_TOKENS, THREADS, write_corpus
from chunkcache.api import Engine
from chunkcache.rag import IngestReport


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(int(THREADS))
    yield
    torch.set_num_threads(before)


@dataclass
class Pristine:
    corpus: Path
    store: Path
    report: IngestReport
    hashes: dict[str, list[str]]  # file name -> chunk hashes


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    base = tmp_path_factory.mktemp("pristine")
    corpus = write_corpus(base / "corpus", CORPUS)
    store = base / "store"
    with Engine(store=store, k=3, max_new_tokens=MAX_NEW_TOKENS) as eng:
        report = eng.ingest([corpus], progress=False)
        hashes = {Path(d).name: eng.index.document_chunk_hashes(d) for d in eng.index.documents()}
    return Pristine(corpus, store, report, hashes)


@pytest.fixture
def store_copy(pristine: Pristine, tmp_path: Path) -> Callable[[str], Path]:
    """A fresh copy of the pristine store under tmp_path (call with a name for several)."""

    def _copy(name: str = "store") -> Path:
        dst = tmp_path / name
        shutil.copytree(pristine.store, dst)
        return dst

    return _copy


@pytest.fixture
def open_engine() -> Iterator[Callable[..., Engine]]:
    """Open Engines (k=3, short answers by default); all are closed at teardown."""
    opened: list[Engine] = []

    def _open(store: Path, **kw) -> Engine:
        kw.setdefault("k", 3)
        kw.setdefault("max_new_tokens", MAX_NEW_TOKENS)
        eng = Engine(store=store, **kw)
        opened.append(eng)
        return eng

    yield _open
    for eng in opened:
        eng.close()


@pytest.fixture(scope="session")
def shared_engine(pristine: Pristine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """One Engine for tests that only ask questions (on its own copy of the pristine store)."""
    store = tmp_path_factory.mktemp("shared") / "store"
    shutil.copytree(pristine.store, store)
    eng = Engine(store=store, k=3, max_new_tokens=MAX_NEW_TOKENS)
    yield eng
    eng.close()
