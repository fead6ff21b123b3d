"""store_lock: a second process cannot take a held store lock and gets StoreLockedError."""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from chunkcache.store import StoreLockedError, store_lock


def _try_lock(root: Path, conn: Connection) -> None:
    """In a child process: try the lock briefly and report what happened."""
    try:
        with store_lock(root, timeout=0.2):
            conn.send(("acquired", ""))
    except StoreLockedError as e:
        conn.send(("locked", str(e)))


def _other_process_tries(root: Path) -> tuple[str, str]:
    ctx = multiprocessing.get_context("fork")  # fork: the child needs no fresh interpreter or torch import
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_try_lock, args=(root, child))
    proc.start()
    proc.join(timeout=20)
    assert proc.exitcode == 0
    return parent.recv()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_second_process_is_refused_while_lock_held(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with store_lock(root, timeout=1):
        outcome, message = _other_process_tries(root)
    assert outcome == "locked"
    assert str(root) in message
    assert _other_process_tries(root) == ("acquired", "")  # released on exit
