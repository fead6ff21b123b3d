"""The FastAPI application: OpenAI-compatible generation, RAG queries, documents, health and metrics.

``create_app`` wires the routers, the OpenAI-shaped error handlers, and three ASGI middlewares, outermost
first: the response counter, the optional API key on ``/v1`` routes, and the body size limit (checked before
any parsing). The serving engine must
already be started; whoever started it stops it (server.py, when uvicorn returns).
"""

from __future__ import annotations

from pathlib import Path

import time
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import Response

from chunkcache.serve import completions, documents, rag
from chunkcache.serve.auth import BearerAuth
from chunkcache.serve.errors import install_error_handlers
from chunkcache.serve.limits import DEFAULT_MAX_BODY, BodyLimit
from chunkcache.serve.metrics import CountResponses, Metrics
from chunkcache.serve.state import ServerState, state

if TYPE_CHECKING:
    from chunkcache.api import Engine
    from chunkcache.engine.serving import ServingEngine

models = APIRouter()
ops = APIRouter()
STARTED = int(time.time())


def _model_card(st: ServerState) -> dict:
    return {"id": st.model_id, "object": "model", "created": STARTED, "owned_by": "chunkcache"}


@models.get("/v1/models")
async def list_models(st: ServerState = Depends(state)) -> dict:
    """The one served model."""
    return {"object": "list", "data": [_model_card(st)]}


@models.get("/v1/models/{model:path}")
async def get_model(model: str, st: ServerState = Depends(state)) -> dict:
    """The served model's card; 404 for any other name."""
    st.check_model(model)
    return _model_card(st)


@ops.get("/health")
async def health(st: ServerState = Depends(state)) -> dict:
    """Liveness and the scheduler's state (always open, for probes)."""
    return {"status": "ok", "model": st.model_id, "strategy": st.engine.strategy_spec,
            "engine": st.serving.snapshot()}


@ops.get("/metrics")
async def metrics(st: ServerState = Depends(state)) -> Response:
    """Prometheus exposition text (always open, for scrapers)."""
    body, content_type = st.metrics.render()
    return Response(body, media_type=content_type)


def create_app(engine: "Engine", serving: "ServingEngine", model_alias: str | None = None,
               api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY,
               default_max_tokens: int = 256, ingest_roots: list[Path] | None = None) -> FastAPI:
    """The server over a loaded ``engine`` and its started ``serving`` engine. ``model_alias`` is another name
    clients may use for the model (e.g. ``default``); ``api_key`` None leaves the API open. Server-side paths
    may be ingested only inside ``ingest_roots`` (none: only uploaded text)."""
    st = ServerState(engine, serving, Metrics(serving.snapshot, serving.reuse.store.stats), engine.model_name,
                     frozenset({model_alias} - {None}), default_max_tokens,
                     tuple(p.expanduser().resolve() for p in ingest_roots or []))
    app = FastAPI(title="chunkcache", version="0.1.0",
                  description="OpenAI-compatible serving that reuses per-chunk KV caches")
    app.state.chunkcache = st
    for router in (completions.router, models, rag.router, documents.router, ops):
        app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)
    app.add_middleware(CountResponses, metrics=st.metrics)
    return app
