"""``chunkcache bench workload``: the policy sweep over a Zipf trace, through the tiers' own eviction code."""

from __future__ import annotations

import json

from chunkcache.cli import main


def test_workload_bench_sweeps_policies_and_capacities(tmp_path, capsys):
    out, png = tmp_path / "w.json", tmp_path / "w.png"
    assert main(["bench", "workload", "--queries", "80", "--capacities", "10%,100%", "--policies", "lru,value,optimal",
                 "--json", str(out), "--plot", str(png)]) == 0
    res = json.loads(out.read_text())
    rows = {(r["policy"], round(r["capacity_share"], 2)): r for r in res["sweep"]}
    assert set(rows) == {(p, c) for p in ("lru", "value", "optimal") for c in (0.1, 1.0)}
    full = {r["recomputed_tokens"] for (p, c), r in rows.items() if c == 1.0}
    assert len(full) == 1  # everything fits: no policy matters, only first sightings are computed
    for c in (0.1, 1.0):
        assert rows[("optimal", c)]["recomputed_tokens"] <= min(rows[(p, c)]["recomputed_tokens"] for p in ("lru", "value"))
        assert rows[("lru", c)]["recomputed_tokens"] <= res["no_cache_tokens"]
    assert rows[("lru", 0.1)]["recomputed_tokens"] > rows[("lru", 1.0)]["recomputed_tokens"]
    assert all(0 <= r["hit_rate"] <= 1 for r in res["sweep"])
    assert res["prefix_cache_recomputed_tokens"] > rows[("value", 1.0)]["recomputed_tokens"]  # chunks beat prefixes
    assert png.stat().st_size > 10_000
    assert "vs prefix caching" in capsys.readouterr().out
