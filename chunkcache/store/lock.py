"""An inter-process lock on a store directory.

Single record writes are already atomic (store/disk.py), but two processes ingesting into one
store at once would interleave their writes, variant evictions and deletions. Ingest takes this
lock around its writes so such runs serialize; a process that cannot get it within ``timeout``
gets a clear :class:`StoreLockedError` instead of waiting forever.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


class StoreLockedError(RuntimeError):
    """Another process holds the store's lock and did not release it in time."""


@contextmanager
def store_lock(root: Path, timeout: float = 10.0) -> Iterator[None]:
    """Hold the lock file ``root/.lock`` for the duration of the block (``timeout`` in seconds; -1 waits forever)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(root / ".lock")
    try:
        lock.acquire(timeout=timeout)
    except Timeout as e:
        raise StoreLockedError(
            f"the chunk store at {root} is locked by another process (waited {timeout} s); "
            "wait for that ingest to finish, or retry with a longer timeout"
        ) from e
    try:
        yield
    finally:
        lock.release()
