"""Helpers shared by the end-to-end tests: the tiny corpora, the CLI runner, store inspection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# torch threads for the tests (in-process and CLI subprocesses). On a small, busy CPU the default
# (one thread per core) makes OpenMP threads spin against each other and every model call ~20x
# slower; one thread is both fast and deterministic.
THREADS = os.environ.get("CHUNKCACHE_TEST_THREADS", "1")

CLI = str(Path(sys.executable).with_name("chunkcache"))

QUESTION = "What color is the Zorblat fruit?"
FACT = "purple"
OTHER_QUESTION = "Where does the Zorblat fruit grow?"
MAX_NEW_TOKENS = 24

CORPUS = {
    "zorblat.md": "# The Zorblat fruit\n\n"
    "The Zorblat fruit is purple and grows only on Mount Kelvar. "
    "Farmers on Mount Kelvar harvest the Zorblat in early spring.\n",
    "cooking.md": "# Cooking pasta\n\n"
    "To cook pasta, bring a large pot of salted water to a boil. Add the pasta and stir. "
    "Cook it for about ten minutes, then drain it and serve it with tomato sauce.\n",
    "trains.md": "# Steam trains\n\n"
    "Steam locomotives burn coal to boil water. The steam pushes pistons that turn the wheels. "
    "The first public steam railway opened in England in 1825.\n",
    "knitting.md": "# Knitting a scarf\n\n"
    "Cast on forty stitches with thick wool. Knit every row until the scarf is as long as you like, "
    "then cast off and weave in the loose ends.\n",
}


def write_corpus(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CHUNKCACHE_STORE", None)
    env["OMP_NUM_THREADS"] = THREADS
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def run_cli(*args: str | os.PathLike, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``chunkcache ARGS`` to completion; stdout and stderr captured as text."""
    return subprocess.run([CLI, *map(str, args)], cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def popen_cli(*args: str | os.PathLike, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([CLI, *map(str, args)], cwd=cwd, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def record_files(store: Path) -> dict[Path, int]:
    """Every record file under ``<store>/kv/records`` (temp files excluded) -> its mtime in ns."""
    root = store / "kv" / "records"
    return {p: p.stat().st_mtime_ns for p in root.glob("*/*/*.safetensors") if not p.name.startswith(".")}


def record_dir(store: Path, chunk_hash: str) -> Path:
    return store / "kv" / "records" / chunk_hash[:2] / chunk_hash


def corrupt(path: Path, n: int = 64) -> None:
    """Flip ``n`` bytes in the middle of the file (tensor data, past the header)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Non-zero exit; stderr ends with exactly one ``error: ...`` line (no traceback) naming ``fragments``."""
    assert proc.returncode != 0, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert lines[-1].startswith("error: "), proc.stderr
    assert len(error_lines(proc.stderr)) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]
