"""What every endpoint needs: the engines, the metrics and the server's settings (one object on ``app.state``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from chunkcache.serve.errors import APIError
from chunkcache.serve.metrics import Metrics

T = TypeVar("T")

if TYPE_CHECKING:
    from chunkcache.api import Engine
    from chunkcache.engine.serving import ServingEngine


@dataclass
class ServerState:
    """``engine`` answers retrieval and document calls; ``serving`` runs every generation."""

    engine: "Engine"
    serving: "ServingEngine"
    metrics: Metrics
    model_id: str                       # the served model's name, as /v1/models lists it
    aliases: frozenset[str] = field(default_factory=frozenset)  # other names clients may use for it
    default_max_tokens: int = 256
    ingest_roots: tuple[Path, ...] = ()  # folders whose files may be ingested by server-side path
    _tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)
    _engine_lock: threading.Lock = field(default_factory=threading.Lock)

    async def tokenize(self, fn: Callable[..., T], *args: object) -> T:
        """Run a tokenizer call off the event loop (a long prompt takes a while), one at a time: the Rust
        tokenizer refuses concurrent calls that change its settings."""
        def locked() -> T:
            with self._tokenizer_lock:
                return fn(*args)

        return await run_in_threadpool(locked)

    async def engine_call(self, fn: Callable[..., T], *args: object) -> T:
        """Run a retrieval or document call of ``engine`` off the event loop, one at a time: the embedder's
        tokenizer is not safe to share between threads, and ingests must not interleave."""
        def locked() -> T:
            with self._engine_lock:
                return fn(*args)

        return await run_in_threadpool(locked)

    def check_model(self, name: str) -> None:
        """404 unless ``name`` is the served model (its id or an alias such as ``default``)."""
        if name != self.model_id and name not in self.aliases:
            raise APIError(404, f"the model {name!r} does not exist: this server serves {self.model_id!r}",
                           "model", "model_not_found")


def state(request: Request) -> ServerState:
    """The server's state (a FastAPI dependency)."""
    return request.app.state.chunkcache
