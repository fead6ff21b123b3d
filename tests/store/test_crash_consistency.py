"""kill -9 while records flow down from memory to disk and Redis in the background leaves every tier
consistent: each record is either absent or whole and verifiable, and every listed variant has its value."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from chunkcache.store import DiskTier, RedisTier
from chunkcache.store.format import decode_record, verify_file
from store_helpers import FP

WRITER = """
import sys
sys.path.insert(0, sys.argv[3])
from store_helpers import build_record
from chunkcache.store import DiskTier, MemoryTier, RedisTier, TieredStore
store = TieredStore([MemoryTier(1 << 20), DiskTier(sys.argv[1], "test-model-fingerprint"),
                     RedisTier(sys.argv[2], "test-model-fingerprint")], flow_down=True)
print("ready", flush=True)
for i in range(100000):
    store.put(build_record(seed=i, layers=8, tokens=64, heads=4, head_dim=32))
"""


def test_kill_9_mid_write_leaves_every_tier_consistent(tmp_path: Path, redis_server) -> None:
    root = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), redis_server.url,
                             str(Path(__file__).parent)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(3)  # well into the write loop, with writes queued and in flight on the flow-down thread
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    files = list((root / "records").rglob("*.safetensors"))
    assert len(files) > 3
    for path in files:
        verify_file(path, FP)  # raises if any visible file is partial
    with DiskTier(root, FP) as disk:
        assert disk.verify()[1] == []
    redis = RedisTier(redis_server.url, FP)
    client = redis_server.client()
    listed = 0
    for key in client.scan_iter(match="chunkcache:*:variants"):
        chunk_id = key.decode().split("{", 1)[1].split("}", 1)[0]
        for variant in redis.variants(chunk_id):
            value = client.get(redis.key(chunk_id, variant))
            assert value is not None, "a variant listed without its value"
            decode_record(value, FP, chunk_id, variant)
            assert client.exists(redis.key(chunk_id, "tokens"))
            listed += 1
    assert listed > 3
