"""Prometheus metrics of the server (``GET /metrics``), in a registry of its own.

Counted as requests finish: time to first token and end-to-end latency (histograms), prompt tokens reused from
chunk records and recomputed, completion tokens, and HTTP responses by route and status code (an ASGI
middleware, so 401s, 413s and 429s count too). Read at scrape time, so they can never go stale: the
scheduler's queue depth, running requests and free KV blocks (``ServingEngine.snapshot()``), and the chunk
store's lookup hits, misses and evictions per tier (``store.stats()``), and whether a remote tier is up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _LiveCollector(Collector):
    """Gauges and store counters read from the engine when scraped."""

    def __init__(self, snapshot: Callable[[], dict], store_stats: Callable[[], dict]) -> None:
        self.snapshot, self.store_stats = snapshot, store_stats

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        for key, name, doc in (("waiting", "queue_depth", "requests waiting for admission"),
                               ("running", "requests_running", "requests being prefilled or decoded"),
                               ("kv_blocks_free", "kv_blocks_free", "free blocks of the paged KV pool"),
                               ("kv_blocks_total", "kv_blocks_total", "blocks of the paged KV pool")):
            yield GaugeMetricFamily(f"chunkcache_{name}", doc, value=float(snap.get(key, 0)))
        hits = CounterMetricFamily("chunkcache_cache_hits", "chunk record lookups found, per store tier",
                                   labels=["tier"])
        misses = CounterMetricFamily("chunkcache_cache_misses", "chunk record lookups not found, per store tier",
                                     labels=["tier"])
        evictions = CounterMetricFamily("chunkcache_cache_evictions", "chunk records evicted, per store tier",
                                        labels=["tier"])
        unavailable = CounterMetricFamily(
            "chunkcache_cache_tier_unavailable", "calls a remote tier skipped or failed while it was down or slow "
            "(requests were served from the local tiers)", labels=["tier"])
        up = GaugeMetricFamily("chunkcache_cache_tier_up", "1 while a remote tier is in use, 0 while it is marked "
                               "down", labels=["tier"])
        for tier in _tiers(self.store_stats()):
            name = str(tier.get("tier", "store"))
            hits.add_metric([name], float(tier.get("hits", 0)))
            misses.add_metric([name], float(tier.get("misses", 0)))
            if "evictions" in tier:
                evictions.add_metric([name], float(tier["evictions"]))
            if "unavailable" in tier:
                unavailable.add_metric([name], float(tier["unavailable"]))
                up.add_metric([name], float(bool(tier.get("available"))))
        yield from (hits, misses, evictions, unavailable, up)


def _tiers(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The store's own counters (a tiered store's whole-store ones included) and each tier's."""
    return [stats, *stats.get("tiers", [])]


class Metrics:
    """The server's metrics; ``snapshot`` and ``store_stats`` are the engine's live views."""

    def __init__(self, snapshot: Callable[[], dict], store_stats: Callable[[], dict]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("chunkcache_ttft_seconds", "time to first token", registry=r,
                              buckets=_LATENCY_BUCKETS)
        self.latency = Histogram("chunkcache_request_latency_seconds", "end-to-end generation request latency",
                                 ["endpoint"], registry=r, buckets=_LATENCY_BUCKETS)
        self.reused = Counter("chunkcache_prompt_tokens_reused", "prompt tokens reused from chunk records",
                              registry=r)
        self.recomputed = Counter("chunkcache_prompt_tokens_recomputed", "prompt tokens computed by prefill",
                                  registry=r)
        self.completion = Counter("chunkcache_completion_tokens", "tokens generated", registry=r)
        self.responses = Counter("chunkcache_http_requests", "HTTP responses by route and status code",
                                 ["route", "code"], registry=r)
        r.register(_LiveCollector(snapshot, store_stats))

    def finished(self, endpoint: str, stats: dict, seconds: float) -> None:
        """Account one generation request that ran to completion (``stats``: the handle's)."""
        prompt, cached = int(stats.get("prompt_tokens", 0)), int(stats.get("cached_tokens", 0))
        self.reused.inc(cached)
        self.recomputed.inc(max(prompt - cached, 0))
        self.completion.inc(int(stats.get("completion_tokens", 0)))
        if stats.get("ttft_ms") is not None:
            self.ttft.observe(float(stats["ttft_ms"]) / 1e3)
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class CountResponses:
    """ASGI middleware: count every HTTP response by route template and status code."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            self.metrics.responses.labels(getattr(route, "path", "unmatched"), str(status[0])).inc()
