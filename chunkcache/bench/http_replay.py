"""Replay a trace against an OpenAI-compatible server with N concurrent streaming clients.

Each client is a coroutine over one shared ``AsyncOpenAI`` client (the official SDK, as a RAG app would
use it): it takes the next request of the trace, sends it as a streaming chat completion (greedy, with
``stream_options.include_usage`` so the last chunk carries ``usage``), and records TTFT at the first chunk
that carries content, end-to-end latency at the end of the stream, and the usage counts, including
``usage.prompt_tokens_details.cached_tokens``: the prompt tokens the server reused. A failed request is
recorded with its error and the client moves on.
"""

from __future__ import annotations

import asyncio
import time

from chunkcache.bench.serve_report import RequestResult
from chunkcache.bench.server_process import ServerError
from chunkcache.bench.workload import TraceRequest


async def _one(client, model: str, req: TraceRequest, max_tokens: int) -> RequestResult:
    """Send one request and measure it."""
    res = RequestResult(req.index)
    t0 = time.perf_counter()
    chunks_with_content = 0
    try:
        stream = await client.chat.completions.create(
            model=model, messages=req.messages(), max_tokens=max_tokens, temperature=0.0, stream=True,
            stream_options={"include_usage": True})
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                chunks_with_content += 1
                if res.ttft_s is None:
                    res.ttft_s = time.perf_counter() - t0
            if chunk.usage is not None:
                usage = chunk.usage
        res.latency_s = time.perf_counter() - t0
    except Exception as e:  # any failure of one request is a measurement, not a crash of the benchmark
        res.error = f"{type(e).__name__}: {e}"
        return res
    if usage is None:
        res.completion_tokens = chunks_with_content
        return res
    res.prompt_tokens = usage.prompt_tokens
    res.completion_tokens = usage.completion_tokens
    details = usage.prompt_tokens_details
    res.cached_tokens = (details.cached_tokens or 0) if details is not None else 0
    return res


async def _replay(url: str, model: str, trace: list[TraceRequest], clients: int, max_tokens: int,
                  warmup: int, timeout_s: float) -> tuple[list[RequestResult], float]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url.rstrip("/") + "/v1", api_key="chunkcache-bench", timeout=timeout_s,
                         max_retries=0)
    try:
        for _ in range(warmup):  # load kernels and allocate, on text unrelated to the trace
            warm = TraceRequest(-1, -1, ("Warm-up passage.",), "Say hello.")
            r = await _one(client, model, warm, 2)
            if r.error:
                raise ServerError(f"warm-up request to {url} failed: {r.error}")
        queue: asyncio.Queue[TraceRequest] = asyncio.Queue()
        for req in trace:
            queue.put_nowait(req)
        results: list[RequestResult] = []

        async def worker() -> None:
            while True:
                try:
                    req = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results.append(await _one(client, model, req, max_tokens))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    finally:
        await client.close()
    return sorted(results, key=lambda r: r.index), wall


def replay_http(url: str, model: str, trace: list[TraceRequest], clients: int, max_tokens: int,
                warmup: int = 1, timeout_s: float = 600.0) -> tuple[list[RequestResult], float]:
    """Per-request results (in trace order) and the wall time of the timed part (warm-up excluded)."""
    if clients < 1:
        raise ValueError("clients must be at least 1")
    return asyncio.run(_replay(url, model, trace, clients, max_tokens, warmup, timeout_s))
