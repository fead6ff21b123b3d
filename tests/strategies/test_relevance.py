"""``relevance``: BM25 over token ids, whole-chunk selection on hand-made layouts, and a run on the real model."""

from __future__ import annotations

import math

import pytest
import torch

from chunkcache.engine.prompt import Layout, Span
from chunkcache.engine.reuse import ReuseEngine
from chunkcache.kv.record import ChunkRecord
from chunkcache.strategies import make_strategy
from chunkcache.strategies.base import Request
from chunkcache.strategies.relevance import bm25

LAYERS = 4
# template 0..4, chunks A 5..14 (first: exact), B 15..24, C 25..34, D 35..39 (short), question 40..44
LAYOUT = Layout(Span(0, 5), [Span(5, 15), Span(15, 25), Span(25, 35), Span(35, 40)], Span(40, 45),
                ["A", "B", "C", "D"])
QUESTION = list(range(40, 45))
COMMON, RARE, OTHER = 7, 50, 60  # token ids: in every chunk, in one chunk, in another chunk


def rec(cid: str) -> ChunkRecord:
    kv = [torch.zeros(1, 10, 2) for _ in range(LAYERS)]
    return ChunkRecord(cid, list(range(10)), kv, [v.clone() for v in kv], "fp", [])


def request(chunks: list[list[int]], question: list[int], cands=None, probe=None) -> Request:
    ids = torch.tensor([1] * 5 + [t for c in chunks for t in c] + question)
    cands = cands if cands is not None else [[rec(c)] for c in "ABCD"]
    return Request(LAYOUT, cands, LAYERS, probe, ids)


def test_bm25_ranks_by_rare_shared_tokens_and_ignores_what_every_doc_holds():
    docs = [[COMMON, 9, 9], [COMMON, RARE, 9], [COMMON, RARE, OTHER], [COMMON, 9, 9, 9]]
    s = bm25([COMMON, RARE, OTHER], docs)
    assert s[2] > s[1] > s[0] > 0  # both rare tokens > one > only the common one
    assert s[0] == pytest.approx(s[3], rel=0.2)  # what every document holds barely separates them
    assert bm25([99], docs) == [0.0] * 4 and bm25([1], []) == []


def test_vocabulary_rank_prior_breaks_a_tie_of_idf_toward_the_later_token_id():
    # each query token is held by one document: plain BM25 ties; the prior ln(2 + id) favours the token a BPE
    # vocabulary learned later, the rarer one (an id near 3000 weighs more than 5)
    docs = [[COMMON, 9], [5, 9], [3000, 9]]
    plain = bm25([5, 3000], docs, prior=False)
    assert plain[1] == pytest.approx(plain[2]) and plain[0] == 0
    weighted = bm25([5, 3000], docs)
    assert weighted[2] > weighted[1] > 0
    assert weighted[2] / weighted[1] == pytest.approx(math.log(3002) / math.log(7))


def test_most_relevant_stale_chunk_is_recomputed_whole_up_to_twice_the_budget_else_its_start():
    chunks = [[RARE, OTHER] + [COMMON] * 8,  # A: the most relevant, but exact after the template: never repaired
              [COMMON] * 10, [COMMON] * 9 + [RARE], [COMMON] * 5]
    question = [RARE, OTHER, COMMON, 2, 3]
    # stale: B, C, D (25 tokens). ratio 0.2: budget 5, and C (10 tokens, at most twice that) is taken whole;
    # B and D hold only the common token and would not fit after it
    plan = make_strategy("relevance:ratio=0.2,rest=none").decide(request(chunks, question)).plan
    assert plan.initial.tolist() == list(range(25, 35)) + QUESTION
    # ratio 0.15: budget 4, C is more than twice that: only its first 4 tokens
    plan = make_strategy("relevance:ratio=0.15,rest=none").decide(request(chunks, question)).plan
    assert plan.initial.tolist() == list(range(25, 29)) + QUESTION


def test_walk_stops_at_the_first_chunk_that_does_not_fit_and_skips_irrelevant_ones():
    chunks = [[COMMON] * 10, [COMMON] * 9 + [OTHER], [COMMON] * 9 + [RARE], [RARE, OTHER, COMMON, 2, 2]]
    question = [RARE, OTHER, 2, 3, 4]
    plan = make_strategy("relevance:ratio=0.6,rest=none").decide(request(chunks, question)).plan
    # D holds both rare tokens and 2; B and C one each (a tie, broken by position). Budget ceil(0.6 * 25) = 15:
    # D (5) and B (10) fit, C would not, so the walk stops there
    assert plan.initial.tolist() == list(range(15, 25)) + list(range(35, 40)) + QUESTION
    # nothing shares a scored token with the question: nothing is repaired, whatever the budget
    plan = make_strategy("relevance:ratio=1,rest=none").decide(request(chunks, [3, 4, 5, 6, 8])).plan
    assert plan.initial.tolist() == QUESTION


def test_missing_chunks_are_computed_and_ratio_zero_repairs_nothing():
    chunks = [[COMMON] * 10, [RARE] * 10, [COMMON] * 10, [COMMON] * 5]
    cands = [[rec("A")], [], [rec("C")], [rec("D")]]
    plan = make_strategy("relevance:rest=none").decide(request(chunks, [RARE, 2, 3, 4, 5], cands)).plan
    assert plan.initial.tolist() == list(range(15, 25)) + QUESTION  # B computed (no record); C, D score 0
    plan = make_strategy("relevance:ratio=0,rest=none").decide(request(chunks, [COMMON, 2, 3, 4, 5])).plan
    assert plan.initial.tolist() == QUESTION
    with pytest.raises(ValueError):
        make_strategy("relevance:ratio=2")


def test_on_the_model_it_recomputes_the_chunk_that_names_the_question_s_subject(smol):
    engine = ReuseEngine(*smol)
    texts = ["The harbour opens at dawn and the ferry leaves at nine.\n\n",
             "The violet lantern is stored in locker 4711 behind the stage.\n\n",
             "The market sells bread, fish and fruit every morning.\n\n"]
    chunks = [engine.encode_chunk(t)[1] for t in texts]
    for ids in chunks:
        engine.precompute(ids)
    q = engine.template.encode_question("Where is the violet lantern stored?")
    pre = engine.prefill(chunks, q, make_strategy("relevance:ratio=0.5,rest=none"))
    layout = pre.layout
    computed = set(pre.decision.plan.initial.tolist())
    assert set(layout.chunks[1].range().tolist()) <= computed  # the lantern's passage, in full
    assert not computed & set(layout.chunks[2].range().tolist())
    assert pre.stats.recompute_fraction == pytest.approx(len(layout.chunks[1]) / layout.context_tokens)


def test_default_is_the_hybrid_and_without_a_probe_it_says_so():
    strategy = make_strategy("relevance")
    assert (strategy.ratio, strategy.rest) == (0.2, "probe")
    chunks = [[COMMON] * 10, [COMMON] * 10, [COMMON] * 10, [COMMON] * 5]
    with pytest.raises(ValueError, match="probe"):  # no chunk is relevant: the whole budget goes to the probe
        strategy.decide(request(chunks, [3, 4, 5, 6, 8]))


def test_rest_probe_spends_what_whole_chunks_leave_on_the_tokens_the_last_row_reads():
    chunks = [[COMMON] * 10, [COMMON] * 9 + [OTHER], [COMMON] * 9 + [RARE], [RARE, OTHER, COMMON, 2, 2]]
    calls: list = []

    def probe(records, layers, last_row):
        calls.append((layers, last_row))
        return torch.arange(45, dtype=torch.float32)  # later positions read more

    req = request(chunks, [RARE, OTHER, 2, 3, 4], probe=probe)
    plan = make_strategy("relevance:ratio=0.5,rest=probe").decide(req).plan
    # budget ceil(0.5 * 25) = 13: D (5) whole, B (10) does not fit; the 8 left go to the most read stale
    # tokens outside D: the end of C
    assert plan.initial.tolist() == list(range(27, 35)) + list(range(35, 40)) + QUESTION
    assert calls == [(list(range(LAYERS)), True)]
    lexical = make_strategy("relevance:ratio=0.5,rest=none").decide(req).plan
    assert lexical.initial.tolist() == list(range(35, 40)) + QUESTION
    with pytest.raises(ValueError):
        make_strategy("relevance:rest=all")


def test_no_probe_pass_for_a_remainder_under_min_rest_of_the_budget():
    chunks = [[COMMON] * 10, [COMMON] * 9 + [OTHER], [COMMON] * 9 + [RARE], [RARE, OTHER, COMMON, 2, 2]]
    calls: list = []

    def probe(records, layers, last_row):
        calls.append(layers)
        return torch.arange(45, dtype=torch.float32)

    req = request(chunks, [RARE, OTHER, 2, 3, 4], probe=probe)
    # budget ceil(0.24 * 25) = 6: D (5) whole leaves 1 token, a sixth of the budget: not worth a probe pass
    plan = make_strategy("relevance:ratio=0.24").decide(req).plan
    assert plan.initial.tolist() == list(range(35, 40)) + QUESTION and calls == []
    plan = make_strategy("relevance:ratio=0.24,min_rest=0").decide(req).plan
    assert plan.initial.tolist() == [34] + list(range(35, 40)) + QUESTION and len(calls) == 1
    with pytest.raises(ValueError):
        make_strategy("relevance:min_rest=2")
