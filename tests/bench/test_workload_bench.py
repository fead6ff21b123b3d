"""``chunkcache bench workload``: the policy sweep over a Zipf trace, through the tiers' own eviction code."""

from __future__ import annotations

import json

from chunkcache.bench.cache_sim import POPULARITY_ORACLE, replay_tiers
from chunkcache.cli import main


def test_workload_bench_sweeps_policies_and_capacities(tmp_path, capsys):
    out, png = tmp_path / "w.json", tmp_path / "w.png"
    assert main(["bench", "workload", "--queries", "80", "--capacities", "10%,100%",
                 "--policies", "lru,value,popularity,optimal",
                 "--json", str(out), "--plot", str(png)]) == 0
    res = json.loads(out.read_text())
    rows = {(r["policy"], round(r["capacity_share"], 2)): r for r in res["sweep"]}
    assert set(rows) == {(p, c) for p in ("lru", "value", "popularity", "optimal") for c in (0.1, 1.0)}
    full = {r["recomputed_tokens"] for (p, c), r in rows.items() if c == 1.0}
    assert len(full) == 1  # everything fits: no policy matters, only first sightings are computed
    for c in (0.1, 1.0):
        assert rows[("optimal", c)]["recomputed_tokens"] <= min(rows[(p, c)]["recomputed_tokens"]
                                                               for p in ("lru", "value", "popularity"))
        assert rows[("lru", c)]["recomputed_tokens"] <= res["no_cache_tokens"]
    assert rows[("lru", 0.1)]["recomputed_tokens"] > rows[("lru", 1.0)]["recomputed_tokens"]
    assert all(0 <= r["hit_rate"] <= 1 for r in res["sweep"])
    assert res["prefix_cache_recomputed_tokens"] > rows[("value", 1.0)]["recomputed_tokens"]  # chunks beat prefixes
    assert png.stat().st_size > 10_000
    assert "vs prefix caching" in capsys.readouterr().out


def test_popularity_reference_keeps_the_most_requested_chunks():
    """The online ceiling: with room for two equal chunks it holds the two the trace asks for most, so after
    the first sightings every request for them hits and every other request misses."""
    queries = [[0], [1], [2], [0], [1], [0], [2], [1], [0], [3]]  # counts: 0 x4, 1 x3, 2 x2, 3 x1
    r = replay_tiers(queries, [10] * 4, [0] * len(queries), [20], POPULARITY_ORACLE, 1, 0.0)
    assert r.misses == 2 + 2 + 1  # first sightings of 0 and 1; both requests of 2 (never admitted); 3
    assert r.recomputed == [10, 10, 10, 0, 0, 0, 10, 0, 0, 10]
    lru = replay_tiers(queries, [10] * 4, [0] * len(queries), [20], "lru", 1, 0.0)
    assert lru.misses > r.misses
