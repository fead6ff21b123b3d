"""Remote tier: chunk records in a shared Redis, so serving replicas reuse what any one of them computed.

DESIGN section 4's last tier. A record is one binary value in exactly the disk format (store/format.py:
safetensors bytes with the model fingerprint and a checksum over every tensor), so a value is verified on
read like a file: a damaged value, or one holding another model's states, is deleted, counted as corrupt and
reported as a miss — the caller recomputes.

Keys, for a store namespace ``ns`` and the first 16 hex digits of the model fingerprint ``fp``::

    ns:fp:{<chunk id>}:<variant>   the record
    ns:fp:{<chunk id>}:variants    set of the chunk's variant names
    ns:fp:{<chunk id>}:tokens      the chunk's token ids (int64 bytes), for matching chunks inside prompts

A put writes all three in one MULTI/EXEC transaction, so no reader sees a variant listed without its value.
Past one Redis: the ``{chunk id}`` hash tag sends every key of a chunk to the same Redis Cluster hash slot
(CRC16 mod 16384), so the transaction stays single-slot and valid, and chunks spread evenly over the
shards; ``redis.cluster.RedisCluster`` has the same commands. Only ``chunk_tokens`` and ``clear`` scan, and
they would scan every primary.

Availability: a request must never fail because Redis does. Any Redis error or a reply slower than
``timeout_s`` marks the tier down for ``retry_s`` seconds: reads are misses and writes are skipped (the
record stays in the local tiers), ``unavailable`` counts them for the metrics, and one warning is logged
per outage. After ``retry_s`` the next operation tries again; when it succeeds Redis is used again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis
import torch

from chunkcache.kv.record import ISOLATED, ChunkRecord
from chunkcache.store.base import CacheCounters, KVTier
from chunkcache.store.format import CorruptRecordError, decode_record, encode_record

log = logging.getLogger(__name__)
T = TypeVar("T")


class RedisTier(KVTier):
    """Records of one model (``fingerprint``) in the Redis at ``url`` (``redis://host:port/db``)."""

    tier_name = "redis"
    concurrent_reads = True

    def __init__(self, url: str, fingerprint: str, namespace: str = "chunkcache", timeout_s: float = 2.0,
                 retry_s: float = 5.0) -> None:
        self.url = url
        self.fingerprint = fingerprint
        self.retry_s = retry_s
        self._prefix = f"{namespace}:{fingerprint[:16]}"
        # records are MBs: read replies in 1 MiB pieces rather than redis-py's default 64 KiB
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                            socket_read_size=1 << 20)
        self.counters = CacheCounters()
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._was_up = True
        self.unavailable = 0

    def key(self, chunk_id: str, what: str) -> str:
        """The Redis key of a chunk's ``what`` (a variant name, ``variants`` or ``tokens``)."""
        return f"{self._prefix}:{{{chunk_id}}}:{what}"

    @property
    def available(self) -> bool:
        """False while the tier is marked down after a failure."""
        with self._lock:
            return time.monotonic() >= self._down_until

    def get(self, chunk_id: str, variant: str = ISOLATED) -> ChunkRecord | None:
        """The verified record, or None on a miss, a corrupt value (then deleted) or Redis being down."""
        key = self.key(chunk_id, variant)
        data = self._call(lambda: self._client.get(key), None)
        if data is None:
            self.counters.add(misses=1)
            return None
        try:
            record = decode_record(data, self.fingerprint, chunk_id, variant)
        except CorruptRecordError as e:
            log.warning("dropping corrupt record %s from redis: %s", key, e)
            self._call(lambda: self._client.delete(key), None)
            self.counters.add(misses=1, corrupt=1)
            return None
        self.counters.add(hits=1)
        return record

    def put(self, record: ChunkRecord) -> None:
        """Store ``record`` with its variant listed and its tokens, in one transaction (skipped while down)."""
        if record.fingerprint != self.fingerprint:
            raise ValueError(f"record of model {record.fingerprint!r} put into the store of {self.fingerprint!r}")
        if not self.available:
            self._skipped()
            return
        value = encode_record(record)
        tokens = torch.tensor(record.token_ids, dtype=torch.int64).numpy().tobytes()

        def write() -> None:
            with self._client.pipeline(transaction=True) as tx:
                tx.set(self.key(record.chunk_id, record.variant), value)
                tx.sadd(self.key(record.chunk_id, "variants"), record.variant)
                tx.set(self.key(record.chunk_id, "tokens"), tokens)
                tx.execute()

        self._call(write, None)

    def variants(self, chunk_id: str) -> list[str]:
        names = self._call(lambda: self._client.smembers(self.key(chunk_id, "variants")), set())
        return sorted(n.decode() for n in names)

    def delete(self, chunk_id: str) -> int:
        """Remove every variant of ``chunk_id`` with its list and tokens; return how many variants went."""
        variants = self.variants(chunk_id)
        keys = [self.key(chunk_id, v) for v in variants] + [self.key(chunk_id, "variants"), self.key(chunk_id, "tokens")]
        self._call(lambda: self._client.delete(*keys), None)
        return len(variants)

    def __contains__(self, chunk_id: object) -> bool:
        return isinstance(chunk_id, str) and bool(self._call(
            lambda: self._client.exists(self.key(chunk_id, "variants")), 0))

    def chunk_tokens(self) -> Iterator[tuple[str, list[int]]]:
        """(chunk id, token ids) of every chunk of this model in Redis (empty while Redis is down)."""
        keys = self._call(lambda: list(self._client.scan_iter(match=f"{self._prefix}:*:tokens", count=1000)), [])
        for key in keys:
            raw = self._call(lambda k=key: self._client.get(k), None)
            if raw is not None:
                chunk_id = key.decode().split("{", 1)[1].split("}", 1)[0]
                yield chunk_id, torch.frombuffer(bytearray(raw), dtype=torch.int64).tolist()

    def clear(self) -> None:
        """Delete every key of this model's records (other models' and other namespaces' stay)."""
        def wipe() -> None:
            batch = []
            for key in self._client.scan_iter(match=f"{self._prefix}:*", count=1000):
                batch.append(key)
                if len(batch) == 1000:
                    self._client.delete(*batch)
                    batch = []
            if batch:
                self._client.delete(*batch)
        self._call(wipe, None)

    def stats(self) -> dict[str, Any]:
        return {"tier": self.tier_name, "url": _redacted(self.url), "available": self.available,
                "unavailable": self.unavailable, **self.counters.snapshot()}

    def close(self) -> None:
        self._client.close()

    def _call(self, op: Callable[[], T], fallback: T) -> T:
        """``op()``, or ``fallback`` when Redis is down or fails now (which marks it down for ``retry_s``)."""
        if not self.available:
            self._skipped()
            return fallback
        try:
            result = op()
        except redis.RedisError as e:
            with self._lock:
                self._down_until = time.monotonic() + self.retry_s
                self.unavailable += 1
                was_up = self._was_up
                self._was_up = False
            if was_up:
                log.warning("redis at %s unavailable (%s: %s); serving from local tiers, retrying every %.0f s",
                            _redacted(self.url), type(e).__name__, e, self.retry_s)
            return fallback
        with self._lock:
            if not self._was_up:
                log.warning("redis at %s is back", _redacted(self.url))
            self._was_up = True
        return result

    def _skipped(self) -> None:
        with self._lock:
            self.unavailable += 1


def _redacted(url: str) -> str:
    """``url`` without a password, for logs and stats."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    return f"{scheme}://***@{rest.split('@', 1)[1]}" if scheme else f"***@{rest.split('@', 1)[1]}"
