"""Start and stop a real ``chunkcache serve`` process on a free loopback port; talk to it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 30
API_KEY = "test-key-7f3a"


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running server: where it listens, its API key, and its log file."""

    base: str
    api_key: str | None
    log: Path
    proc: subprocess.Popen

    def client(self, **kw: object) -> OpenAI:
        """The official OpenAI client pointed at this server (no retries: tests see every status)."""
        return OpenAI(base_url=f"{self.base}/v1", api_key=self.api_key or "unused", max_retries=0, timeout=120, **kw)

    def http(self, **kw: object) -> httpx.Client:
        """A raw HTTP client (with the key, if any), for what the OpenAI client cannot send."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=120, **kw)

    def health(self) -> dict:
        return httpx.get(f"{self.base}/health", timeout=10).json()


def start_server(tmp: Path, *args: str, env_key: str | None = None) -> Server:
    """Start ``chunkcache serve`` with a store under ``tmp`` and wait until /health answers. ``env_key``: the
    API key given through ``$CHUNKCACHE_API_KEY`` instead of a flag."""
    port = free_port()
    log = tmp / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("CHUNKCACHE_API_KEY", None)
    if env_key is not None:
        env["CHUNKCACHE_API_KEY"] = env_key
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "chunkcache.cli", "serve", "--port", str(port),
                                 "--store", str(tmp / "store"), *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                key = args[args.index("--api-key") + 1] if "--api-key" in args else env_key
                return Server(base, key, log, proc)
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not become healthy in {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def stop_server(server: Server) -> None:
    """SIGTERM, as a service manager would; the server must exit cleanly and in time."""
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        pytest.fail(f"server did not stop within {STOP_TIMEOUT_S} s of SIGTERM")
    assert code == 0, f"server exited with {code}:\n{server.log.read_text()[-4000:]}"
