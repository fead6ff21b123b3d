"""``chunkcache serve --redis``: records reach the shared Redis, and Redis dying mid-run fails no request
(the local tiers serve, /metrics says the tier is down); when it is back it is used again."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import start_server, stop_server

PASSAGE = "The Velmora ferry leaves for the outer islands at dawn and returns at dusk, weather permitting."


def _metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    m = re.search(rf'^{name}(?:_total)?\{{tier="redis"\}} (\S+)$', text, re.MULTILINE)
    assert m, f"{name} for the redis tier missing from /metrics"
    return float(m.group(1))


def test_redis_killed_mid_run_fails_no_request(tmp_path: Path, redis_server) -> None:
    server = start_server(tmp_path, "--redis", redis_server.url)
    try:
        with server.http() as http:
            assert http.post("/v1/documents", json={"name": "ferry.md", "text": PASSAGE}).status_code == 200
            assert redis_server.client().keys("chunkcache:*:tokens")  # the ingested chunk reached Redis
            redis_server.stop()
            statuses = []
            for question in ("When does the ferry leave?", "When does it come back?", "Where does it go?"):
                statuses.append(http.post("/v1/rag/query", json={"question": question, "k": 1, "max_tokens": 4}
                                          ).status_code)
            chat = server.client().chat.completions.create(
                model="smollm2-135m-instruct", max_tokens=4,
                messages=[{"role": "user", "content": f"{PASSAGE}\n\nWhen does the ferry leave?"}])
            assert statuses == [200, 200, 200] and chat.choices[0].message.content is not None
            assert _metric(server.base, "chunkcache_cache_tier_up") == 0
            assert _metric(server.base, "chunkcache_cache_tier_unavailable") >= 1
            redis_server.start()  # back, empty
            time.sleep(5.5)  # the tier retries after 5 s
            other = "Velmora's fish market opens at four in the morning and closes at noon."
            assert http.post("/v1/documents", json={"name": "market.md", "text": other}).status_code == 200
            assert redis_server.client().keys("chunkcache:*:tokens")  # written to Redis again
            assert _metric(server.base, "chunkcache_cache_tier_up") == 1
    finally:
        stop_server(server)
