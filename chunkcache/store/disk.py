"""Local-disk tier: one checksummed safetensors file per chunk variant, written atomically.

Layout under ``root``::

    records/<id[:2]>/<id>/<variant>.safetensors   one record each (format: store/format.py)
    counters.sqlite                                hit/miss/corrupt counters, shared by processes

A write goes to a temporary file in the record's directory, is fsynced, and replaces the target
with ``os.replace``, so a reader sees the old file or the new one, never half of one, and a crash
leaves at most a ``.tmp`` file that no read looks at. A file that fails verification on read — damaged,
truncated, another model's (fingerprint mismatch) — is deleted, counted as corrupt, logged, and
reported as a miss: a cache must never hand out states it cannot vouch for.

Several processes may read and write one store: each file appears atomically and the counters are
SQLite. Serializing whole ingests is the caller's business (store/lock.py).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from chunkcache.kv.record import ISOLATED, ChunkRecord
from chunkcache.store.base import KVTier
from chunkcache.store.counters import SqliteCounters
from chunkcache.store.format import (CorruptRecordError, read_layers, read_record, read_tokens, verify_file,
                                      write_record)

log = logging.getLogger(__name__)

_SUFFIX = ".safetensors"
# Chunk ids are sha256 hex digests and variants "isolated" or a short hex hash; anything else could
# escape the records directory, so it is refused.
_NAME = re.compile(r"[A-Za-z0-9_-]{2,128}")


class DiskTier(KVTier):
    """Chunk records of one model (``fingerprint``) under ``root``, at most ``max_variants`` per chunk.

    When a write brings a chunk over ``max_variants``, its oldest non-isolated variants (by file
    modification time) are dropped. The isolated variant and the one just written are never dropped,
    so a chunk can hold one more than ``max_variants`` when ``max_variants`` is 1.
    """

    concurrent_reads = True

    def __init__(self, root: Path, fingerprint: str, max_variants: int = 4) -> None:
        if max_variants < 1:
            raise ValueError(f"max_variants must be at least 1, got {max_variants}")
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.max_variants = max_variants
        self._records = self.root / "records"
        self._records.mkdir(parents=True, exist_ok=True)
        self.counters = SqliteCounters(self.root / "counters.sqlite")

    def path(self, chunk_id: str, variant: str = ISOLATED) -> Path:
        """Where the file of (chunk_id, variant) lives (whether or not it exists)."""
        for name in (chunk_id, variant):
            if not _NAME.fullmatch(name):
                raise ValueError(f"invalid chunk id or variant name: {name!r}")
        return self._records / chunk_id[:2] / chunk_id / f"{variant}{_SUFFIX}"

    def get(self, chunk_id: str, variant: str = ISOLATED) -> ChunkRecord | None:
        """Load and verify the record; None on a miss or when the file is corrupt (it is then deleted)."""
        path = self.path(chunk_id, variant)
        try:
            record = read_record(path, self.fingerprint, chunk_id, variant)
        except FileNotFoundError:
            self.counters.add(misses=1)
            return None
        except CorruptRecordError as e:
            self._drop(path, e)
            self.counters.add(misses=1, corrupt=1)
            return None
        self.counters.add(hits=1)
        return record

    def get_layers(
        self, chunk_id: str, variant: str, layers: Sequence[int], *, count_lookup: bool = False
    ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """(K, V) of ``layers`` only, read lazily and verified; None on a miss or a corrupt file.

        Layer-by-layer loading calls this once per layer, so by default it leaves the hit/miss
        counters alone (corrupt files are still counted); pass ``count_lookup=True`` on the call
        that stands for the chunk's lookup. A layer index the record lacks raises IndexError.
        """
        path = self.path(chunk_id, variant)
        try:
            kv = read_layers(path, self.fingerprint, chunk_id, variant, layers)
        except FileNotFoundError:
            self.counters.add(misses=int(count_lookup))
            return None
        except CorruptRecordError as e:
            self._drop(path, e)
            self.counters.add(misses=int(count_lookup), corrupt=1)
            return None
        self.counters.add(hits=int(count_lookup))
        return kv

    def put(self, record: ChunkRecord) -> None:
        """Write ``record`` atomically (temp file, fsync, rename), then bound the chunk's variants."""
        if record.fingerprint != self.fingerprint:
            raise ValueError(f"record of model {record.fingerprint!r} put into the store of {self.fingerprint!r}")
        path = self.path(record.chunk_id, record.variant)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        try:
            write_record(record, tmp)
            _fsync(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync(path.parent)  # make the rename itself durable
        self._bound_variants(record.chunk_id, keep=record.variant)

    def variants(self, chunk_id: str) -> list[str]:
        """Variant names stored for ``chunk_id``, sorted."""
        return sorted(self._variant_files(chunk_id))

    def delete(self, chunk_id: str) -> int:
        """Delete every variant file of ``chunk_id`` (and its directory); return how many were deleted."""
        removed = 0
        for path in self._variant_files(chunk_id).values():
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass  # another process deleted it first
        try:
            self.path(chunk_id).parent.rmdir()
        except OSError:
            pass  # absent, or a write in flight left a file in it
        return removed

    def __contains__(self, chunk_id: object) -> bool:
        return isinstance(chunk_id, str) and _NAME.fullmatch(chunk_id) is not None and bool(self.variants(chunk_id))

    def clear(self) -> None:
        """Delete every record file; the lookup counters are kept."""
        shutil.rmtree(self._records)
        self._records.mkdir(parents=True, exist_ok=True)

    def stats(self) -> dict[str, Any]:
        """Record and chunk counts, bytes on disk, and the persistent lookup counters."""
        records = nbytes = 0
        chunks = set()
        for path in self._all_files():
            try:
                nbytes += path.stat().st_size
            except FileNotFoundError:
                continue
            records += 1
            chunks.add(path.parent.name)
        return {
            "tier": "disk",
            "root": str(self.root),
            "records": records,
            "chunks": len(chunks),
            "bytes": nbytes,
            **self.counters.snapshot(),
        }

    def verify(self) -> tuple[int, list[str]]:
        """Fully check every record file; delete the bad ones. Returns (number good, paths deleted)."""
        n_ok, bad = 0, []
        for path in self._all_files():
            try:
                verify_file(path, self.fingerprint)
            except FileNotFoundError:
                continue
            except CorruptRecordError as e:
                self._drop(path, e)
                bad.append(str(path))
                continue
            n_ok += 1
        self.counters.add(corrupt=len(bad))
        return n_ok, bad

    def chunk_tokens(self) -> Iterator[tuple[str, list[int]]]:
        """(chunk id, token ids) of every stored chunk, read from one variant's header and token tensor;
        corrupt files are dropped and skipped."""
        seen: set[str] = set()
        for path in self._all_files():
            chunk_id, variant = path.parent.name, path.name.removesuffix(_SUFFIX)
            if chunk_id in seen:
                continue
            try:
                tokens = read_tokens(path, self.fingerprint, chunk_id, variant)
            except FileNotFoundError:
                continue
            except CorruptRecordError as e:
                self._drop(path, e)
                continue
            seen.add(chunk_id)
            yield chunk_id, tokens

    def close(self) -> None:
        """Close the counters database."""
        self.counters.close()

    def _variant_files(self, chunk_id: str) -> dict[str, Path]:
        directory = self.path(chunk_id).parent
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return {}
        return {
            e.name.removesuffix(_SUFFIX): Path(e.path)
            for e in entries
            if e.name.endswith(_SUFFIX) and not e.name.startswith(".")
        }

    def _all_files(self) -> Iterator[Path]:
        for path in sorted(self._records.glob(f"*/*/*{_SUFFIX}")):
            if not path.name.startswith("."):
                yield path

    def _bound_variants(self, chunk_id: str, keep: str) -> None:
        files = self._variant_files(chunk_id)
        excess = len(files) - self.max_variants
        if excess <= 0:
            return
        candidates = []
        for variant, path in files.items():
            if variant in (ISOLATED, keep):
                continue
            try:
                candidates.append((path.stat().st_mtime_ns, variant, path))
            except FileNotFoundError:
                excess -= 1  # already gone
        for _, variant, path in sorted(candidates)[: max(excess, 0)]:
            log.info("chunk %s over %d variants: dropping variant %s", chunk_id, self.max_variants, variant)
            path.unlink(missing_ok=True)

    def _drop(self, path: Path, reason: Exception) -> None:
        log.warning("dropping unusable cache file %s: %s", path, reason)
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """fsync a file or directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
