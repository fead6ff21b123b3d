"""A bounded load test (16 concurrent clients) and the Prometheus metrics it must move."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import openai
from serve_helpers import Server

CLIENTS, REQUESTS_EACH, TIME_LIMIT_S = 16, 8, 300
METRICS = ("chunkcache_ttft_seconds", "chunkcache_request_latency_seconds", "chunkcache_prompt_tokens_reused_total",
           "chunkcache_prompt_tokens_recomputed_total", "chunkcache_completion_tokens_total",
           "chunkcache_http_requests_total", "chunkcache_queue_depth", "chunkcache_requests_running",
           "chunkcache_kv_blocks_free", "chunkcache_cache_hits_total", "chunkcache_cache_misses_total")


def _scrape(server: Server) -> dict[str, float]:
    """Every sample of /metrics, keyed by name and labels."""
    text = httpx.get(f"{server.base}/metrics").text
    samples = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            samples[m.group(1)] = float(m.group(2))
    return samples


def _total(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def test_sixteen_clients_get_no_errors_and_metrics_move(server: Server, model_id: str) -> None:
    before = _scrape(server)
    client = openai.AsyncOpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0, timeout=TIME_LIMIT_S)
    errors: list[str] = []

    async def one_client(i: int) -> int:
        tokens = 0
        for j in range(REQUESTS_EACH):
            try:
                if j % 2:
                    r = await client.completions.create(model=model_id, prompt=f"Client {i} says {j}:", max_tokens=3)
                else:
                    r = await client.chat.completions.create(
                        model=model_id, max_tokens=3, messages=[{"role": "user", "content": f"Say {i} {j}"}])
                tokens += r.usage.completion_tokens
            except openai.APIError as e:
                errors.append(f"client {i} request {j}: {e!r}")
        return tokens

    async def everyone() -> list[int]:
        async with client:
            return await asyncio.wait_for(asyncio.gather(*(one_client(i) for i in range(CLIENTS))), TIME_LIMIT_S)

    t0 = time.monotonic()
    generated = asyncio.run(everyone())
    assert not errors, errors[:5]
    assert time.monotonic() - t0 < TIME_LIMIT_S
    health = httpx.get(f"{server.base}/health")
    assert health.status_code == 200 and health.json()["engine"]["running"] == 0

    after = _scrape(server)
    text = httpx.get(f"{server.base}/metrics").text
    for name in METRICS:
        assert name in text, name
    n = CLIENTS * REQUESTS_EACH
    assert _total(after, "chunkcache_ttft_seconds_count") - _total(before, "chunkcache_ttft_seconds_count") == n
    assert (_total(after, "chunkcache_completion_tokens_total") - _total(before, "chunkcache_completion_tokens_total")
            == sum(generated))
    assert _total(after, "chunkcache_prompt_tokens_recomputed_total") > _total(
        before, "chunkcache_prompt_tokens_recomputed_total")
    ok = 'chunkcache_http_requests_total{code="200",route="/v1/chat/completions"}'
    assert after[ok] - before.get(ok, 0) == n // 2
