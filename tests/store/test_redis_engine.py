"""The Redis tier under the real engine (SmolLM2): one process reuses what another computed, and Redis dying
mid-run fails no request."""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from chunkcache.engine.reuse import ReuseEngine
from chunkcache.store import MemoryTier, RedisTier, TieredStore
from chunkcache.strategies import make_strategy

WRITER = """
import sys
from chunkcache.engine.reuse import ReuseEngine
from chunkcache.models.loader import load_model
from chunkcache.store import MemoryTier, RedisTier, TieredStore

model, tok = load_model("default")
engine = ReuseEngine(model, tok)
engine.store = TieredStore([MemoryTier(1 << 28), RedisTier(sys.argv[1], engine.fingerprint)])
chunk_id, ids = engine.encode_chunk(sys.argv[2])
engine.precompute(ids, chunk_id)
print(chunk_id)
"""
PASSAGES = ["The harbour master of Velmora keeps the tide tables in a brass box.",
            "Ferries leave Velmora for the outer islands twice a day, at dawn and dusk.",
            "The lighthouse on Cape Orrin was automated in 1962.",
            "Velmora's fish market opens at four in the morning."]


def _engine(smol, url: str, retry_s: float = 5.0) -> ReuseEngine:
    model, tok = smol
    engine = ReuseEngine(model, tok)
    engine.store = TieredStore([MemoryTier(1 << 28), RedisTier(url, engine.fingerprint, timeout_s=0.5, retry_s=retry_s)])
    return engine


def test_a_chunk_computed_by_one_process_is_reused_by_another(smol, redis_server) -> None:
    out = subprocess.run([sys.executable, "-c", WRITER, redis_server.url, PASSAGES[0]], capture_output=True,
                         text=True, timeout=300, check=True)
    chunk_id = out.stdout.strip().splitlines()[-1]
    reader = _engine(smol, redis_server.url)
    cid, ids = reader.encode_chunk(PASSAGES[0])
    assert cid == chunk_id  # same model, same identity in both processes
    question = reader.template.encode_question("When is the harbour master's box opened?")
    shared = reader.prefill([ids], question, make_strategy("naive"))
    assert (shared.stats.chunks_hit, shared.stats.chunks_missed) == (1, 0)
    redis_stats = reader.store.tiers[1].stats()
    assert (redis_stats["hits"], redis_stats["corrupt"]) == (1, 0)
    local = ReuseEngine(*smol)  # computes the record itself, in memory only
    local.precompute(ids, cid)
    own = local.prefill([ids], question, make_strategy("naive"))
    assert torch.equal(shared.result.logits, own.result.logits)  # the shared record is the same states


def test_redis_killed_mid_run_fails_no_request(smol, redis_server) -> None:
    engine = _engine(smol, redis_server.url, retry_s=0.3)
    redis_tier = engine.store.tiers[1]
    question = engine.template.encode_question("What opens at four?")
    chunks = [engine.encode_chunk(p)[1] for p in PASSAGES]
    naive = make_strategy("naive")
    engine.prefill(chunks[:2], question, naive)  # both computed, stored in memory and Redis
    redis_server.stop()
    during = engine.prefill(chunks[:3], question, naive)  # two hits from memory, one new chunk
    assert (during.stats.chunks_hit, during.stats.chunks_missed) == (2, 1)
    assert redis_tier.stats()["available"] is False and redis_tier.stats()["unavailable"] >= 1
    redis_server.start()
    time.sleep(0.35)
    after = engine.prefill([chunks[3]], question, naive)
    assert after.stats.chunks_missed == 1
    assert engine.chunk_id(chunks[3]) in redis_tier  # Redis is used again once it is back
    assert redis_tier.stats()["available"] is True
