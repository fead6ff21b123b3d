"""One generation request from the HTTP side: parameters, submission, consumption, cancellation, accounting.

The engine runs in its own thread; a handle submitted with the running event loop is consumed with
``async for``, so waiting for tokens never blocks the loop. Engine refusals become HTTP errors (prompt too
long: 400 naming both numbers; queue full: 429 with ``Retry-After``). A client that goes away cancels its
request: a stream's generator is closed by the server (``finally`` cancels the handle), and a non-streaming
request is watched for disconnection while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from chunkcache.engine.sequence import GenParams, Output, RagPrompt
from chunkcache.engine.serving import PromptTooLongError, QueueFullError, RequestHandle
from chunkcache.serve.errors import APIError
from chunkcache.serve.state import ServerState

log = logging.getLogger("chunkcache.serve")

DISCONNECT_POLL_S = 0.25


def gen_params(st: ServerState, prompt_tokens: int, max_tokens: int | None, temperature: float,
               top_p: float | None, seed: int | None, stop: tuple[str, ...] = ()) -> GenParams:
    """The engine's parameters for a request. Without ``max_tokens``, the server default, shortened to what
    the context window leaves after the prompt (an explicit value is never shortened: too long is a 400).
    A vanishing temperature or top_p is greedy (engine/decode.py ``pick``)."""
    if max_tokens is None:
        room = st.serving.window - prompt_tokens
        max_tokens = min(st.default_max_tokens, room) if room > 0 else st.default_max_tokens
    top_p = 1.0 if top_p is None else top_p
    try:
        return GenParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop)
    except ValueError as e:
        raise APIError(400, str(e), _param_of(str(e)), "invalid_value") from None


def _param_of(message: str) -> str | None:
    for name in ("max_tokens", "temperature", "top_p", "stop", "seed"):
        if name in message:
            return name
    return None


def submit(st: ServerState, prompt: list[int] | RagPrompt, params: GenParams) -> RequestHandle:
    """Hand the request to the engine; its refusals become OpenAI-shaped HTTP errors."""
    try:
        return st.serving.submit(prompt, params, loop=asyncio.get_running_loop())
    except PromptTooLongError as e:
        raise APIError(400, f"this model's context window is {e.window} tokens, but the prompt has "
                            f"{e.prompt_tokens} tokens and max_tokens is {e.max_tokens} "
                            f"({e.prompt_tokens + e.max_tokens} in all): shorten the prompt or lower max_tokens",
                       "max_tokens", "context_length_exceeded") from None
    except QueueFullError as e:
        retry = max(1, math.ceil(e.retry_after))
        raise APIError(429, "the server is at capacity: too many requests waiting; retry later", None,
                       "queue_full", {"Retry-After": str(retry)}) from None
    except ValueError as e:
        raise APIError(400, str(e), "prompt", "invalid_value") from None


@dataclass
class Run:
    """A submitted request as it is consumed: its handle, and what has come out so far."""

    st: ServerState
    handle: RequestHandle
    endpoint: str
    started: float = field(default_factory=time.perf_counter)
    finish_reason: str | None = None
    error: str | None = None

    async def outputs(self) -> AsyncIterator[Output]:
        """The handle's events. Closing this early (client gone, server stopping) cancels the request; a
        request that finishes normally is counted in the metrics."""
        try:
            async for out in self.handle:
                if out.finish_reason is not None:
                    self.finish_reason, self.error = out.finish_reason, out.error
                yield out
                if self.finish_reason is not None:
                    break
        finally:
            if self.finish_reason is None:
                self.handle.cancel()
            elif self.finish_reason in ("stop", "length"):
                self.st.metrics.finished(self.endpoint, self.handle.stats, time.perf_counter() - self.started)
            elif self.finish_reason == "error":
                log.error("request %s failed in the engine: %s", self.handle.request_id, self.error)

    async def text(self, request: Request) -> str:
        """The whole completion (a non-streaming response), cancelling the request if the client leaves."""
        parts: list[str] = []
        watcher = asyncio.create_task(_cancel_on_disconnect(request, self.handle))
        try:
            async for out in self.outputs():
                parts.append(out.text)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        self.raise_for_failure()
        return "".join(parts)

    def raise_for_failure(self) -> None:
        """An engine failure or a shutdown as an HTTP error (the engine's message is logged, not returned)."""
        if self.finish_reason == "error":
            raise APIError(500, f"the engine failed on request {self.handle.request_id}", None, "engine_error")
        if self.finish_reason == "cancelled":
            raise APIError(503, "the request was cancelled: the server is shutting down", None, "cancelled")

    def usage(self) -> dict:
        """OpenAI's usage object from the handle's stats."""
        s = self.handle.stats
        prompt = int(s.get("prompt_tokens", self.handle.prompt_tokens))
        completion = int(s.get("completion_tokens", 0))
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": int(s.get("cached_tokens", 0))}}


async def _cancel_on_disconnect(request: Request, handle: RequestHandle) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)
    handle.cancel()
