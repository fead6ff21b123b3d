"""``ask --structure``: parallel and graph layouts over a real store of linked Markdown pages."""

from __future__ import annotations

import pytest

from app_helpers import MAX_NEW_TOKENS, record_files, run_cli, write_corpus
from chunkcache.api import Engine

LINKED = {
    "falcon.md": "# Project Falcon\n\nProject Falcon builds the ingest service. Its on-call rota is run by "
                 "the team described on [the Heron team page](teams/heron.md).\n",
    "teams/heron.md": "# Heron team\n\nThe Heron team's on-call pager number is 4471. The Heron team meets "
                      "on Tuesdays in room 12.\n",
    "gardening.md": "# Tomatoes\n\nWater tomato plants deeply twice a week and stake them when they flower.\n",
}
QUESTION = "What is the on-call pager number for Project Falcon?"


@pytest.fixture(scope="module")
def linked_store(tmp_path_factory):
    base = tmp_path_factory.mktemp("linked")
    (base / "corpus" / "teams").mkdir(parents=True)
    corpus = write_corpus(base / "corpus", LINKED)
    store = base / "store"
    with Engine(store=store, k=3, max_new_tokens=MAX_NEW_TOKENS) as eng:
        eng.ingest([corpus], progress=False)
    return store


def test_graph_reads_links_computes_the_linking_page_once_then_reuses_it(linked_store):
    before = set(record_files(linked_store))
    with Engine(store=linked_store, k=3, max_new_tokens=MAX_NEW_TOKENS) as eng:
        first = eng.ask(QUESTION, structure="graph")
        assert first.stats["strategy"] == "graph" and first.stats["edges"] == 1
        assert 0 < first.stats["recompute_fraction"] < 0.7  # the falcon page, not the others
        second = eng.ask(QUESTION, structure="graph")
        assert second.stats["recompute_fraction"] == 0.0
        assert second.text == first.text
        par = eng.ask(QUESTION, structure="parallel")
        assert par.stats["strategy"] == "parallel" and par.stats["edges"] == 0
        assert par.stats["recompute_fraction"] == 0.0
    added = set(record_files(linked_store)) - before
    assert len(added) == 1 and next(iter(added)).name != "isolated.safetensors"  # the graph variant


def test_structure_conflicting_with_strategy_is_an_error(linked_store):
    with Engine(store=linked_store, k=3, max_new_tokens=MAX_NEW_TOKENS) as eng:
        with pytest.raises(ValueError, match="--structure graph"):
            eng.ask(QUESTION, structure="graph", strategy="naive")
        with pytest.raises(ValueError, match="unknown structure"):
            eng.ask(QUESTION, structure="tree")
    proc = run_cli("ask", QUESTION, "--store", linked_store, "-k", "3", "--max-new-tokens", "4",
                   "--structure", "graph")
    assert proc.returncode == 0, proc.stderr
    assert "strategy graph" in proc.stdout and "1 edges" in proc.stdout


def test_budget_chooses_more_chunks_when_they_are_cached(linked_store, tmp_path):
    """Under one token budget that fits a single cold chunk, a warm store lets the selector take more; the
    estimate stays within the budget whenever anything fits."""
    import shutil

    store = tmp_path / "store"
    shutil.copytree(linked_store, store)
    with Engine(store=store, k=3, max_new_tokens=4, strategy="focus") as eng:
        _, chunks, q = eng.prompt(QUESTION, 10)
        budget = len(q) + max(map(len, chunks)) + 5
        warm = eng.ask(QUESTION, budget_tokens=budget).stats["selection"]
        assert warm["estimated_tokens"] <= budget and not warm["over_budget"]
        assert warm["cached_chosen"] == warm["chosen"] >= 2
        eng.cache_clear()
        cold = eng.ask(QUESTION, budget_tokens=budget).stats["selection"]
        assert cold["chosen"] == 1 and cold["cached_chosen"] == 0
        timed = eng.ask(QUESTION, budget_ms=50.0).stats["selection"]
        assert timed["ms_per_token"] > 0 and timed["budget_tokens"] == pytest.approx(50.0 / timed["ms_per_token"], rel=0.01)
        with pytest.raises(ValueError, match="not both"):
            eng.ask(QUESTION, budget_tokens=10, budget_ms=5.0)
        with pytest.raises(ValueError, match="positive"):
            eng.ask(QUESTION, budget_tokens=0)
