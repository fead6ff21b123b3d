"""One request's life in the serving engine: what was asked (``GenParams``, the prompt), where it stands
(``Sequence``: status, output, KV blocks, text streamed so far) and the client's end (``RequestHandle``).

Every piece of per-request state lives here, never on shared objects (strategies, the model), so any
number of requests can be in flight at once. The engine thread writes a sequence; the client reads its
handle, which the engine feeds ``Output`` events through a queue: an ``asyncio.Queue`` when the client runs
an event loop (the HTTP server), a ``queue.Queue`` otherwise (in-process benchmarks and tests).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import torch

MAX_STOP_STRINGS = 4


SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1  # what torch.Generator.manual_seed takes


@dataclass(frozen=True)
class GenParams:
    """How to generate: OpenAI's ``max_tokens``, ``temperature`` (0: greedy), ``top_p``, ``seed``, ``stop``."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        if any(not s for s in self.stop):
            raise ValueError("a stop string must not be empty")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise ValueError(f"seed must be a 64-bit integer, in [{SEED_MIN}, {SEED_MAX}], got {self.seed}")


@dataclass(frozen=True)
class RagPrompt:
    """A structured prompt: ``template prefix | chunks | question`` (what ``/v1/rag/query`` builds), with the
    strategy spec that lays it out when not the engine's (``parallel``, ``graph``) and the graph's
    (source, target) chunk edges."""

    chunks: list[list[int]]
    question_ids: list[int]
    strategy: str | None = None
    edges: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Output:
    """One streamed event: the text and token ids new since the previous event, and, on the last event,
    why the request finished ("stop", "length", "cancelled" or "error" with ``error`` saying what)."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    error: str | None = None


class RequestHandle:
    """The client's end of a request: iterate it for ``Output`` events (``async for`` when it was
    submitted with an event loop, plain ``for`` otherwise); ``cancel()`` when the client goes away.
    ``stats`` is filled when the request finishes (see ``Sequence.finish_stats``)."""

    def __init__(self, request_id: str, prompt_tokens: int, loop: asyncio.AbstractEventLoop | None) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.stats: dict = {}
        self.cancelled = threading.Event()
        self._loop = loop
        self._async_q: asyncio.Queue[Output] | None = asyncio.Queue() if loop is not None else None
        self._sync_q: queue.Queue[Output] | None = None if loop is not None else queue.Queue()

    def push(self, out: Output) -> None:
        """Hand an event to the client (called by the engine thread)."""
        if self._async_q is not None:
            try:
                self._loop.call_soon_threadsafe(self._async_q.put_nowait, out)
            except RuntimeError:  # the client's loop is closed: nobody is listening any more
                self.cancelled.set()
        else:
            self._sync_q.put(out)

    def cancel(self) -> None:
        """Stop generating; the engine frees the request's blocks at its next step."""
        self.cancelled.set()

    async def __aiter__(self) -> AsyncIterator[Output]:
        if self._async_q is None:
            raise TypeError("this request was submitted without an event loop: iterate it with `for`")
        while True:
            out = await self._async_q.get()
            yield out
            if out.finish_reason is not None:
                return

    def __iter__(self) -> Iterator[Output]:
        if self._sync_q is None:
            raise TypeError("this request was submitted with an event loop: iterate it with `async for`")
        while True:
            out = self._sync_q.get()
            yield out
            if out.finish_reason is not None:
                return


@dataclass
class Sequence:
    """Engine-side state of one request (see module docstring)."""

    prompt: list[int] | RagPrompt
    prompt_len: int
    params: GenParams
    handle: RequestHandle
    stop_ids: set[int]
    submitted: float = field(default_factory=time.perf_counter)
    blocks: list[int] = field(default_factory=list)
    kv_len: int = 0  # tokens whose K/V sit in the blocks
    next_position: int = 0  # RoPE position of slot ``prompt_len`` (the first decoded token)
    output: list[int] = field(default_factory=list)
    pending: int | None = None  # sampled, streamed, not yet run through the model
    sent_chars: int = 0
    generator: torch.Generator | None = None
    finish_reason: str | None = None
    stats: dict = field(default_factory=dict)
    first_token_at: float | None = None

    @property
    def request_id(self) -> str:
        return self.handle.request_id

    @property
    def budget_tokens(self) -> int:
        """Slots the request may need: the prompt and every token it may generate."""
        return self.prompt_len + self.params.max_tokens

    def rope_position(self, slot: int) -> int:
        return self.next_position + slot - self.prompt_len

    def finish_stats(self) -> dict:
        """The request's stats as the client sees them (``RequestHandle.stats``)."""
        done = time.perf_counter()
        out = dict(self.stats)
        out.update(prompt_tokens=self.prompt_len, completion_tokens=len(self.output),
                   latency_ms=round((done - self.submitted) * 1e3, 2))
        if self.first_token_at is not None:
            out["ttft_ms"] = round((self.first_token_at - self.submitted) * 1e3, 2)
        out.setdefault("cached_tokens", 0)
        return out


def new_request_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"
