"""Shared fixtures: the packaged models (real weights) and the slow/gpu markers."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run tests marked slow (and gpu, where CUDA exists)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        elif ("slow" in item.keywords or "gpu" in item.keywords) and not config.getoption("--runslow"):
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def smol():
    """(CausalLM, tokenizer) of the default packaged SmolLM2-135M-Instruct, fp32 on CPU."""
    from chunkcache.models.loader import load_model

    return load_model("default")


@pytest.fixture(scope="session")
def gemma():
    """(CausalLM, tokenizer) of the packaged Gemma 3 270M base model (sliding-window layers)."""
    from chunkcache.models.loader import load_model

    return load_model("gemma3")


@pytest.fixture(scope="session")
def smol_engine(smol):
    """A ReuseEngine over SmolLM2 with an in-memory store and fp32 records (exactness tests)."""
    import torch

    from chunkcache.engine.reuse import ReuseEngine

    model, tok = smol
    return ReuseEngine(model, tok, store_dtype=torch.float32)


@pytest.fixture
def redis_server(tmp_path):
    """A fresh real redis-server on a loopback port, killed after the test."""
    from redis_server import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
