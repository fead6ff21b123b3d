"""``chunkcache bench select`` on a tiny MuSiQue-format file: the real embedder, tokenizer and eviction code."""

from __future__ import annotations

import json

from chunkcache.bench.datasets import Example
from chunkcache.bench.select_bench import gold_passages
from chunkcache.cli import main

FACTS = [("Who painted the blue door?", "Mara Voss", "The blue door was painted by Mara Voss in 1911."),
         ("Where is the salt mine?", "Karsk", "The old salt mine lies two miles north of Karsk."),
         ("What does the lighthouse burn?", "whale oil", "The lighthouse once burned whale oil every night."),
         ("When did the bridge open?", "1887", "The iron bridge over the gorge opened in 1887.")]
FILLER = ["Bread is baked in the square on Mondays.", "The choir sings in the hall.", "Goats graze on the hill."]


def test_gold_passages_are_the_answer_bearing_ones():
    pool = ["a Mara Voss b", "nothing", "karsk is here"]
    ex = [Example("q", ["mara voss"], pool[:2]), Example("q", ["Karsk"], pool), Example("q", ["zzz"], pool)]
    assert gold_passages(ex, pool) == [{0}, {2}, set()]


def test_select_bench_writes_rows_within_budget(tmp_path, capsys):
    rows = [{"question": q, "answers": [a], "ctxs": [{"title": f"T{i}", "text": t}] +
             [{"title": f"F{i}{j}", "text": f} for j, f in enumerate(FILLER)]} for i, (q, a, t) in enumerate(FACTS)]
    data, out, png = tmp_path / "d.json", tmp_path / "s.json", tmp_path / "s.png"
    data.write_text(json.dumps(rows))
    rc = main(["bench", "select", "--dataset", str(data), "--queries", "40", "--candidates", "6", "--topk", "1,3",
               "--budgets", "80,400", "--capacity", "50%", "--json", str(out), "--plot", str(png)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["workload"]["questions"] == 4 and res["workload"]["pool"] == 16
    by = {r["method"]: r for r in res["rows"]}
    assert set(by) == {"top-1", "top-3", "budget-80", "budget-400"}
    assert by["top-3"]["chunks"] == 3 and by["top-1"]["chunks"] == 1
    for name in ("budget-80", "budget-400"):
        assert by[name]["p95_tokens"] <= by[name]["budget"]
    assert all(0 <= r["recall"] <= 1 and r["cached_share"] > 0 for r in res["rows"])
    assert by["top-1"]["recall"] > 0.5  # the embedder finds the one answer-bearing passage
    assert [c["topk"] for c in res["comparison"]] == [1, 3]
    assert png.stat().st_size > 5_000
    assert "selector recall" in capsys.readouterr().out
