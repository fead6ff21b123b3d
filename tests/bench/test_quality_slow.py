"""Benchmark-scale quality checks (slow: run with --runslow). The numbers the issue asks for come from
``chunkcache bench``; these guard the same claims on smaller samples."""

from __future__ import annotations

import pytest

from chunkcache.bench.datasets import load_dataset, needle
from chunkcache.bench.runner import run

pytestmark = pytest.mark.slow


def test_needle_full_is_accurate_and_reuse_stays_close(smol_engine):
    results = run(smol_engine, needle(20), ["full", "naive", "epic", "cacheblend", "cachecraft"],
                  max_new_tokens=16, progress=False)
    assert results["full"]["accuracy"] >= 0.8
    best = max(results[s]["accuracy"] for s in ("epic", "cacheblend", "cachecraft"))
    assert best >= results["full"]["accuracy"] - 0.05


def test_musique_repair_beats_naive(smol_engine):
    _, examples = load_dataset("musique")
    results = run(smol_engine, examples[:6], ["full", "naive", "cacheblend", "cachecraft"], max_new_tokens=16,
                  progress=False)
    for s in ("cacheblend", "cachecraft"):
        assert results[s]["first_token_kl"] < results["naive"]["first_token_kl"], s
