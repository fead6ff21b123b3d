"""Real ``chunkcache serve`` processes on loopback ports, for the server tests.

``server``: open, default limits, a fresh temporary store. ``guarded_server``: started with ``--api-key``,
``--max-running 1 --max-waiting 1`` (the 401 and 429 tests). Both run the packaged SmolLM2 on CPU and are
stopped with SIGTERM after the session (a server that does not stop cleanly and in time fails the run).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serve_helpers import API_KEY, Server, start_server, stop_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("serve"), "--max-tokens", "16",
                       "--ingest-root", str(tmp_path_factory.getbasetemp()))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("serve-guarded"), "--api-key", API_KEY,
                       "--max-running", "1", "--max-waiting", "1")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def model_id(server: Server) -> str:
    return server.client().models.list().data[0].id
