"""The serving benchmark: its request trace, its report, and small end-to-end runs (in-process and HTTP)."""

from __future__ import annotations

import importlib.util
import json
import statistics
from collections import Counter

import pytest

from chunkcache.bench.datasets import shared_data_dir
from chunkcache.bench.serve_report import RequestResult, percentile, summarize
from chunkcache.bench.word_tokenizer import WordTokenizer
from chunkcache.bench.workload import make_trace, musique_sets, text_sets, zipf_weights

TEXTS = [f"Passage {i}: the {w} river flows past {i + 3} old mills and a stone bridge." for i, w in
         enumerate(["red", "green", "blue", "amber", "grey", "white", "black", "violet", "teal", "olive",
                    "ochre", "pink"])]


def test_trace_is_deterministic_for_a_seed_and_changes_with_it():
    sets = musique_sets(4, seed=0)
    a, b = make_trace(sets, 80, 1.1, seed=3), make_trace(musique_sets(4, seed=0), 80, 1.1, seed=3)
    assert a == b
    assert [r.content() for r in a] == [r.content() for r in b]
    assert make_trace(sets, 80, 1.1, seed=4) != a


def test_zipf_popularity_shows_and_sets_repeat_with_several_questions():
    trace = make_trace(musique_sets(4), 200, 1.1, seed=0)
    counts = Counter(r.set_id for r in trace)
    per_set = [counts.get(i, 0) for i in range(50)]
    assert max(per_set) > 3 * statistics.median(per_set)
    top = counts.most_common(1)[0][0]
    assert len({r.question for r in trace if r.set_id == top}) > 1
    uniform = Counter(r.set_id for r in make_trace(musique_sets(4), 200, 0.0, seed=0))
    assert max(uniform.values()) < max(per_set)


def test_zipf_weights_follow_the_power_law():
    w = zipf_weights(10, 1.0)
    assert sum(w) == pytest.approx(1.0)
    assert w[0] / w[1] == pytest.approx(2.0) and w[0] / w[9] == pytest.approx(10.0)
    assert zipf_weights(4, 0.0) == [0.25] * 4


def test_orders_are_shuffled_but_sets_keep_their_passages():
    sets = text_sets(TEXTS, 4, 3, seed=1)
    trace = make_trace(sets, 60, 0.5, seed=2)
    orders = {}
    for r in trace:
        assert sorted(r.passages) == sorted(sets[r.set_id].passages)
        orders.setdefault(r.set_id, set()).add(r.passages)
    assert any(len(o) > 1 for o in orders.values())


def test_musique_sets_use_the_examples_passages_and_questions():
    sets = musique_sets(3)
    data = json.loads((shared_data_dir() / "musique_dev.json").read_text())
    assert len(sets) == len(data)
    assert sets[0].questions[0] == data[0]["question"]
    texts = {c["text"].strip() for c in data[0]["ctxs"]}
    assert all(p.strip() in texts for p in sets[0].passages)


def test_prompts_are_plain_chat_messages_without_markers():
    trace = make_trace(text_sets(TEXTS, 3, 4, seed=0), 10, 1.0, seed=0)
    for r in trace:
        msgs = r.messages()
        assert [m["role"] for m in msgs] == ["user"]
        content = msgs[0]["content"]
        assert content.startswith("Answer using these passages:\n\n[1] ")
        assert content.endswith(f"Question: {r.question}")
        for i, p in enumerate(r.passages, 1):
            assert f"[{i}] {p.strip()}" in content
        for marker in ("<chunk", "<|chunk", "chunkcache", "<doc", "[[", "]]"):
            assert marker not in content


def test_bad_trace_settings_are_refused():
    with pytest.raises(ValueError):
        text_sets(TEXTS, 13, 2)
    with pytest.raises(ValueError):
        make_trace([], 5)
    with pytest.raises(ValueError):
        zipf_weights(3, -1.0)


def test_summary_counts_rates_percentiles_and_reuse():
    results = [RequestResult(i, ttft_s=0.1 * (i + 1), latency_s=0.5 * (i + 1), prompt_tokens=100,
                             cached_tokens=25 * i, completion_tokens=10) for i in range(4)]
    results.append(RequestResult(4, error="APIError: boom"))
    row = summarize(results, wall_s=2.0)
    assert row["requests"] == 5 and row["errors"] == 1 and row["first_error"] == "APIError: boom"
    assert row["requests_per_s"] == pytest.approx(2.0) and row["output_tokens_per_s"] == pytest.approx(20.0)
    assert row["ttft_ms_p50"] == pytest.approx(250.0) and row["latency_ms_p95"] == pytest.approx(1925.0)
    assert row["reused_fraction"] == pytest.approx(150 / 400)
    assert percentile([], 50) is None and percentile([3.0], 99) == 3.0
    assert row["prefill_ms_p50"] is None  # no engine stats (an HTTP run)


def test_word_tokenizer_keeps_a_passage_the_same_inside_a_prompt():
    tok = WordTokenizer(128256)
    passage = "Title: Mills\nthe red river flows past old mills.\n\n"
    alone = tok(passage, add_special_tokens=False).input_ids
    prompt = tok.apply_chat_template([{"role": "user", "content": "Answer:\n\n" + passage + "Question: why?"}],
                                     add_generation_prompt=True)
    assert any(prompt[i:i + len(alone)] == alone for i in range(len(prompt)))
    assert prompt[0] == tok.bos_token_id and all(3 <= i < 128256 for i in prompt[1:])
    assert tok.decode(tok("the red river", add_special_tokens=False).input_ids) == "the red river"
    blank = [i for i, text in enumerate(tok.batch_decode([[i] for i in range(len(tok))])) if "\n\n" in text]
    assert blank == [tok("\n\n", add_special_tokens=False).input_ids[0]]
    assert prompt.count(blank[0]) == 2  # the two blank lines of the message


def _small_dataset(path) -> None:
    """A MuSiQue-format file of 4 examples x 3 passages of about 45 words (CPU-sized prompts)."""
    colours = ["red", "green", "blue", "amber", "grey", "white", "black", "violet", "teal", "olive", "ochre", "pink"]
    rows = []
    for e in range(4):
        ctxs = []
        for j in range(3):
            c = colours[3 * e + j]
            ctxs.append({"title": f"The {c} valley", "text": (
                f"The {c} valley lies between two ridges and holds {e + j + 2} villages. Its farmers grow barley and "
                f"keep goats, and a {c} stone chapel stands by the river. Every autumn the valley holds a fair where "
                f"traders sell wool, cheese and honey from the high pastures.")})
        rows.append({"question": f"Which valley has the most villages in set {e}?", "answers": ["x"], "ctxs": ctxs})
    path.write_text(json.dumps(rows))


def test_in_process_run_reports_every_field_and_reuse_only_where_expected(tmp_path):
    from chunkcache.cli import main

    _small_dataset(tmp_path / "d.json")
    out = tmp_path / "serve.json"
    rc = main(["bench", "serve", "--in-process", "--strategies", "full,focus", "--no-serial", "--requests", "8",
               "--clients", "2", "--max-tokens", "4", "-k", "2", "--zipf-s", "1.5", "--dataset",
               str(tmp_path / "d.json"), "--json", str(out), "--plot", str(tmp_path / "serve.png")])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "in-process" and list(report["runs"]) == ["full", "focus"]
    assert report["workload"]["requests"] == 8 and report["workload"]["top_set_requests"] >= 2
    for name, row in report["runs"].items():
        assert row["requests"] == 8 and row["errors"] == 0, row["first_error"]
        assert len(row["per_request"]) == 8
        assert row["requests_per_s"] > 0 and row["output_tokens_per_s"] > 0
        assert 0 < row["ttft_ms_p50"] <= row["ttft_ms_p95"] <= row["ttft_ms_p99"]
        assert row["ttft_ms_p50"] <= row["latency_ms_p50"] <= row["latency_ms_p95"]
        assert 0 < row["completion_tokens"] <= 8 * 4
        assert row["prompt_tokens"] > 8 * 2 * 40
        assert 0 <= row["queue_ms_p50"] and 0 < row["prefill_ms_p50"] < row["ttft_ms_p99"]
        assert all(r["engine_stats"]["strategy"] == name for r in row["per_request"])
    assert report["runs"]["full"]["reused_fraction"] == 0
    assert report["runs"]["focus"]["reused_fraction"] > 0
    assert (tmp_path / "serve.png").stat().st_size > 0


@pytest.mark.skipif(importlib.util.find_spec("chunkcache.serve") is None,
                    reason="chunkcache serve (the HTTP server, chunkcache/serve/) is not on this branch yet")
def test_http_run_against_a_spawned_server_reads_usage_from_the_stream(tmp_path, smol):
    from chunkcache.cli import main

    _, tok = smol
    _small_dataset(tmp_path / "d.json")
    out = tmp_path / "serve.json"
    rc = main(["bench", "serve", "--strategies", "focus", "--no-serial", "--requests", "4", "--clients", "2",
               "--max-tokens", "4", "-k", "2", "--zipf-s", "1.5", "--dataset", str(tmp_path / "d.json"),
               "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "spawned-servers" and list(report["runs"]) == ["focus"]
    row = report["runs"]["focus"]
    assert row["requests"] == 4 and row["errors"] == 0, row["first_error"]
    assert 0 < row["ttft_ms_p50"] <= row["latency_ms_p95"]
    trace = make_trace(musique_sets(2, tmp_path / "d.json", seed=0), 4, 1.5, seed=0)
    expected = [len(tok(tok.apply_chat_template(r.messages(), tokenize=False, add_generation_prompt=True),
                        add_special_tokens=False).input_ids) for r in trace]
    assert [r["prompt_tokens"] for r in row["per_request"]] == expected
    assert all(0 < r["completion_tokens"] <= 4 for r in row["per_request"])


def test_unreachable_server_and_bad_flags_end_with_one_line_errors(tmp_path, capsys):
    from chunkcache.bench.server_process import free_port
    from chunkcache.cli import main

    url = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "o.json"
    assert main(["bench", "serve", "--url", url, "--requests", "2", "--json", str(out)]) == 1
    assert f"warm-up request to {url} failed" in capsys.readouterr().err and not out.exists()
    assert main(["bench", "serve", "--url", url, "--in-process", "--json", str(out)]) == 2
    assert main(["bench", "serve", "--model-shape", "llama3-8b", "--json", str(out)]) == 2
    assert main(["bench", "serve", "--strategies", "full,bogus", "--in-process", "--json", str(out)]) == 2
    assert main(["bench", "--json", str(out)]) == 2
