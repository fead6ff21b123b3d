"""Start ``chunkcache serve`` as a subprocess on a free loopback port, for the serving benchmark and tests.

The server runs the same command a user would (``python -m chunkcache.cli serve ...``) with a fresh
temporary store, so every benchmark run starts with empty chunk caches. Its output goes to a log file in
that temporary directory; when the server exits before it answers ``/health``, the error quotes the end
of that log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ServerError(RuntimeError):
    """The server under test did not start or did not answer: the benchmark cannot measure it."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_command(port: int, store: Path, model: str, device: str, strategy: str, max_running: int | None,
                  host: str = "127.0.0.1", extra: list[str] | None = None) -> list[str]:
    """The argv of ``chunkcache serve`` with these settings."""
    cmd = [sys.executable, "-m", "chunkcache.cli", "serve", "--host", host, "--port", str(port), "--model", model,
           "--store", str(store), "--device", device, "--strategy", strategy]
    if max_running is not None:
        cmd += ["--max-running", str(max_running)]
    return cmd + list(extra or [])


def _log_tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll ``url/health`` until it answers 200; raise if the process exits or the time runs out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"chunkcache serve exited with status {proc.returncode} before it was ready:\n"
                               f"{_log_tail(log)}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise ServerError(f"chunkcache serve did not answer {url}/health within {timeout_s:.0f} s:\n{_log_tail(log)}")


@contextmanager
def running_server(model: str, strategy: str, device: str = "cpu", max_running: int | None = None,
                   extra: list[str] | None = None, ready_timeout_s: float = 300.0) -> Iterator[str]:
    """Yield the base URL (``http://127.0.0.1:PORT``) of a fresh ``chunkcache serve``; stop it on exit."""
    with tempfile.TemporaryDirectory(prefix="chunkcache-bench-serve-") as tmp:
        port = free_port()
        log = Path(tmp) / "server.log"
        cmd = serve_command(port, Path(tmp) / "store", model, device, strategy, max_running, extra=extra)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc, log, ready_timeout_s)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
