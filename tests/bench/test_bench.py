"""The benchmark's contract: CLI flags, JSON keys, plot, dataset handling and truncation."""

from __future__ import annotations

import json

import pytest

from chunkcache.bench.datasets import Example, load_dataset, load_json, multihop, needle
from chunkcache.bench.metrics import best_f1, contains_answer, first_token_kl, rouge_l
from chunkcache.bench.runner import fit_passages, run
from chunkcache.cli import main
from chunkcache.engine.reuse import ReuseEngine

KEYS = {"f1", "accuracy", "first_token_agreement", "first_token_kl", "answer_token_agreement", "answer_token_kl",
        "answer_kl_mean", "answer_token_examples", "rougeL_vs_full", "exact_match_vs_full", "recompute_fraction",
        "ttft_ms_mean", "ttft_ms_p50", "prefill_flops", "seconds", "f1_diff_vs_full", "f1_diff_ci95",
        "accuracy_diff_vs_full", "accuracy_diff_ci95", "examples"}


def test_bench_cli_writes_the_json_contract_and_plot(tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    rc = main(["bench", "--dataset", "needle", "--strategies", "full,prefix,naive,epic,cacheblend,cachecraft",
               "--limit", "2", "--max-new-tokens", "6", "--json", str(out), "--plot", str(png), "--quiet"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["dataset"] == "needle" and data["n"] == 2
    assert set(data["strategies"]) == {"full", "prefix", "naive", "epic", "cacheblend", "cachecraft"}
    for name, m in data["strategies"].items():
        assert KEYS <= set(m), name
        assert len(m["examples"]) == 2 and all(isinstance(e["answer"], str) for e in m["examples"])
        assert sum(e["accuracy"] for e in m["examples"]) / 2 == pytest.approx(m["accuracy"])
    full = data["strategies"]["full"]
    assert full["recompute_fraction"] == 1.0 and full["first_token_kl"] == pytest.approx(0, abs=1e-6)
    assert full["answer_kl_mean"] == pytest.approx(0, abs=1e-6) and full["answer_token_agreement"] == 1.0
    assert full["accuracy_diff_vs_full"] == 0 and full["f1_diff_ci95"] == [0, 0]
    naive = data["strategies"]["naive"]
    lo, hi = naive["f1_diff_ci95"]
    assert naive["f1_diff_vs_full"] == pytest.approx(naive["f1"] - full["f1"])
    assert lo <= naive["f1_diff_vs_full"] <= hi
    settings = data["settings"]
    assert settings["hardware"]["cpu"] and settings["hardware"]["torch"] and settings["hardware"]["torch_threads"] >= 1
    assert set(settings["strategy_seconds"]) == set(data["strategies"])
    assert all(v > 0 for v in settings["strategy_seconds"].values())
    assert data["strategies"]["naive"]["recompute_fraction"] == 0.0
    assert 0 < data["strategies"]["cachecraft"]["recompute_fraction"] < 1
    assert full["prefill_flops"] > data["strategies"]["naive"]["prefill_flops"]
    assert png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "cachecraft" in printed and "Δacc [lo, hi]" in printed and "ans-tok KL" in printed


def test_bench_time_limit_scores_only_completed_examples(tmp_path, capsys):
    """A zero time limit still finishes the example in progress, then stops: every strategy is scored on
    that one example and the JSON says how many of the requested examples completed."""
    out = tmp_path / "r.json"
    rc = main(["bench", "--dataset", "needle", "--strategies", "full,naive", "--limit", "3", "--max-new-tokens", "4",
               "--time-limit", "0", "--dtype", "float32", "--json", str(out), "--quiet"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert (data["n"], data["n_requested"]) == (1, 3)
    assert data["settings"]["dtype"] == "float32"
    assert all(len(m["examples"]) == 1 for m in data["strategies"].values())
    assert "1 of 3 examples completed" in capsys.readouterr().out


def test_a_run_in_parts_merges_to_the_run_in_one(tmp_path, capsys):
    """``--skip`` and ``bench merge``: examples 0-2 run as one and as two parts (a renamed strategy, the later
    rename winning) give the same means, paired intervals and per-example records; parts out of order or
    missing a strategy are refused."""
    def bench(name, *extra):
        out = tmp_path / name
        assert main(["bench", "--dataset", "needle", "--max-new-tokens", "4", "--dtype", "float32", "--quiet",
                     "--json", str(out), *extra]) == 0
        return out

    whole = json.loads(bench("whole.json", "--strategies", "full,naive,epic", "--limit", "3").read_text())
    a = bench("a.json", "--strategies", "full,naive,epic:k=16,epic:k=4", "--limit", "1")
    b = bench("b.json", "--strategies", "full,naive,epic", "--skip", "1", "--limit", "2")
    assert json.loads(b.read_text())["skip"] == 1
    merged = tmp_path / "m.json"
    assert main(["bench", "merge", str(a), str(b), "--strategies", "full,naive,epic", "--rename", "epic:k=4", "epic",
                 "--rename", "epic:k=16", "epic", "--json", str(merged)]) == 0
    joined = json.loads(merged.read_text())
    assert joined["n"] == 3 and [p["n"] for p in joined["parts"]] == [1, 2]
    for spec in ("full", "naive", "epic"):
        w, j = whole["strategies"][spec], joined["strategies"][spec]
        assert [e["answer"] for e in j["examples"]] == [e["answer"] for e in w["examples"]]
        for key in ("f1", "first_token_kl", "answer_kl_mean", "rougeL_vs_full", "recompute_fraction",
                    "answer_token_examples", "f1_diff_vs_full", "accuracy_diff_vs_full"):
            assert j[key] == pytest.approx(w[key], rel=1e-5, abs=1e-6), (spec, key)
        assert j["f1_diff_ci95"] == pytest.approx(w["f1_diff_ci95"], abs=1e-6)
    assert "epic:k=16 is taken as epic; its own epic result is left out" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="contiguous"):
        main(["bench", "merge", str(b), str(a), "--strategies", "full,naive", "--json", str(merged)])
    with pytest.raises(SystemExit, match="--rename"):
        main(["bench", "merge", str(a), str(b), "--strategies", "full,epic", "--json", str(merged)])
    with pytest.raises(SystemExit, match="no examples after the first 50"):
        main(["bench", "--dataset", "needle", "--skip", "50", "--json", str(merged)])


def test_bench_rejects_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"question": "not a list"}')
    assert main(["bench", "--dataset", str(bad), "--json", str(tmp_path / "o.json")]) == 2
    assert "must hold a JSON list" in capsys.readouterr().err
    assert main(["bench", "--dataset", "needle", "--strategies", "full,bogus",
                 "--json", str(tmp_path / "o.json")]) == 2
    assert "unknown strategy" in capsys.readouterr().err


def test_dataset_loading(tmp_path):
    name, rows = load_dataset("musique")
    assert name == "musique" and len(rows) == 50 and all(len(r.passages) == 10 for r in rows)
    assert needle(3) == needle(3) and len(needle(3)[0].passages) == 6
    f = tmp_path / "mine.json"
    f.write_text(json.dumps([{"question": "q?", "answers": ["a"], "ctxs": [{"title": "t", "text": "x"}]}]))
    assert load_json(f)[0].passages == ["Title: t\nx\n\n"] and load_json(f)[0].answer_pattern is None
    f.write_text(json.dumps([{"question": "q?", "answers": ["1234"], "ctxs": [{"text": "x"}],
                              "answer_pattern": r"\d{4}"}]))
    assert load_json(f)[0].answer_pattern == r"\d{4}"
    f.write_text(json.dumps([{"question": "q?", "ctxs": []}]))
    with pytest.raises(ValueError, match="example 0"):
        load_json(f)


def test_long_context_drops_whole_passages(smol_engine):
    eng = smol_engine
    words = " ".join(f"w{i}" for i in range(700))
    ex = Example("What?", ["x"], [f"Title: P{i}\n{words}\n\n" for i in range(12)])
    chunks, q = fit_passages(eng, ex, 32)
    all_ids = [eng.encode_chunk(p)[1] for p in ex.passages]
    assert 0 < len(chunks) < len(all_ids)
    assert chunks == all_ids[: len(chunks)]  # whole passages, in order, never cut
    total = len(eng.template.prefix_ids) + sum(map(len, chunks)) + len(q) + 32
    assert total <= eng.model.shape.max_positions


def test_metrics():
    assert best_f1("The answer is Paris.", ["paris"]) == pytest.approx(0.5)  # P = 1/3, R = 1
    assert best_f1("Paris", ["London", "paris"]) == 1.0
    assert contains_answer("The code of the red fox is 4821.", ["4821"]) == 1.0
    assert contains_answer("It is 48210.", ["4821"]) == 0.0
    assert rouge_l("a b c d", "a b c d") == 1.0 and rouge_l("a b", "c d") == 0.0
    import torch

    x = torch.tensor([1.0, 2.0, 3.0])
    assert first_token_kl(x, x) == pytest.approx(0.0, abs=1e-7)
    assert first_token_kl(x, torch.tensor([3.0, 2.0, 1.0])) > 0.5


def test_graph_variants_are_computed_before_timing_and_reported(smol):
    """On the linked set, graph's variants are built before the timed prefill (recompute 0 there) and their
    one-time cost is reported; strategies without edges report none."""
    res = run(ReuseEngine(*smol), multihop(2, links=True), ["full", "graph", "parallel"], max_new_tokens=2,
              progress=False)
    assert res["graph"]["recompute_fraction"] == 0.0
    assert 0.2 < res["graph"]["setup_recompute_fraction"] < 0.8  # the three biographies of seven passages
    assert "setup_recompute_fraction" not in res["parallel"]
