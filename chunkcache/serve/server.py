"""``chunkcache serve``: load the engine, start the serving engine, run uvicorn until SIGINT or SIGTERM.

While it runs, uvicorn owns the signals: on either it stops accepting connections and lets open requests
finish (up to ``GRACE_S``). It then re-raises the signal it caught; the handlers installed here turn that into
a normal return, so the serving engine is stopped (requests still pending end "cancelled"), the store is
closed, and the process exits with status 0 rather than dying of the signal.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
from pathlib import Path
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from chunkcache.serve.limits import DEFAULT_MAX_BODY

API_KEY_ENV = "CHUNKCACHE_API_KEY"
GRACE_S = 10

log = logging.getLogger("chunkcache.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's options (``--store``, ``--model``, ``--device``, ``--strategy`` come from the
    shared engine options)."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1 routes (default ${API_KEY_ENV}, else open)")
    p.add_argument("--max-running", type=int, default=32, help="requests decoded together (default 32)")
    p.add_argument("--max-waiting", type=int, default=64,
                   help="requests queued beyond those; more get 429 (default 64)")
    p.add_argument("--kv-bytes", type=int, default=1 << 30, help="paged KV pool size in bytes (default 1 GiB)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY,
                   help="largest request body accepted; larger get 413 (default 8 MiB)")
    p.add_argument("--max-tokens", type=int, default=256,
                   help="completion length when a request sets none (default 256)")
    p.add_argument("--ingest-root", action="append", default=[], metavar="DIR",
                   help="a folder whose files POST /v1/documents may ingest by server-side path (repeatable; "
                        "default none: only uploaded text is accepted)")


def check_arguments(args: argparse.Namespace) -> None:
    """Reject bad settings before the model loads."""
    for name in ("max_running", "max_waiting", "kv_bytes", "max_body_bytes", "max_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.port < 65536:
        raise ValueError("--port must be in [1, 65535]")


class _Stopped(Exception):
    """A stop signal arrived (raised by the handler below, caught in ``serve``)."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signal.Signals(signum).name)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``_Stopped`` in the main thread; the previous handlers come back after."""
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _dump(serving) -> None:
    faulthandler.dump_traceback(all_threads=True)
    print(f"requests in flight: {serving.in_flight()}", file=sys.stderr, flush=True)


def serve(args: argparse.Namespace) -> int:
    """Run the server until it is told to stop; returns the exit status. ``kill -USR1`` writes every thread's
    stack and the requests in flight to stderr (a stuck request can be diagnosed without stopping the server)."""
    check_arguments(args)
    import uvicorn

    from chunkcache.api import Engine
    from chunkcache.engine.serving import ServingConfig, ServingEngine
    from chunkcache.serve.app import create_app

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    from chunkcache.cli import tier_flags

    engine = Engine(store=args.store, model=args.model, strategy=args.strategy, device=args.device,
                    tiers=tier_flags(args))
    try:
        log.info("%d documents indexed", len(engine.index.documents()))  # loads the index and embedder now
        serving = ServingEngine(engine.reuse, engine.strategy,
                                ServingConfig(kv_bytes=args.kv_bytes, max_running=args.max_running,
                                              max_waiting=args.max_waiting))
        serving.start()
        signal.signal(signal.SIGUSR1, lambda *_: _dump(serving))
        try:
            app = create_app(engine, serving, model_alias=args.model, api_key=api_key,
                             max_body_bytes=args.max_body_bytes, default_max_tokens=args.max_tokens,
                             ingest_roots=[Path(d) for d in args.ingest_root])
            config = uvicorn.Config(app, host=args.host, port=args.port, timeout_graceful_shutdown=GRACE_S,
                                    log_level="info" if args.verbose else "warning", access_log=args.verbose)
            print(f"chunkcache serving {engine.model_name} on http://{args.host}:{args.port}/v1 "
                  f"(store {engine.root}, strategy {engine.strategy_spec}, "
                  f"API key {'required' if api_key else 'off'})", flush=True)
            with _stop_on_signals():
                try:
                    uvicorn.Server(config).run()
                except _Stopped as e:
                    log.info("stopped by %s", e)
        finally:
            serving.shutdown()
    finally:
        engine.close()
    return 0
