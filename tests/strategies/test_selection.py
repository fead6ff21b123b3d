"""Each strategy's token selection on hand-made layouts (no model: small hand-built records)."""

from __future__ import annotations

import math

import pytest
import torch

from chunkcache.engine.prompt import Layout, Span
from chunkcache.kv.record import ChunkRecord
from chunkcache.strategies import make_strategy
from chunkcache.strategies.base import Request, is_exact
from chunkcache.strategies.cacheblend import BlendPlan
from chunkcache.strategies.cachecraft import cfo, kendall_tau_distance

LAYERS = 4
# template prefix 0..4, chunks A 5..14, B 15..24, C 25..34, question 35..39
LAYOUT = Layout(Span(0, 5), [Span(5, 15), Span(15, 25), Span(25, 35)], Span(35, 40), ["A", "B", "C"])


def rec(cid: str, prefix: list[str] | None = None, outside: list[float] | None = None,
        inter: list[float] | None = None, intra: float = 50.0, exact: bool | None = None) -> ChunkRecord:
    """A 10-token record; ``exact`` defaults to ChunkRecord's rule (isolated: exact, captured: not)."""
    prefix = prefix or []
    n = 10
    kv = [torch.zeros(1, n, 2) for _ in range(LAYERS)]
    inter_t = torch.tensor([inter or [0.5] * (1 + len(prefix))] * LAYERS)
    out = torch.tensor(outside) if outside is not None else torch.linspace(0.1, 1.0, n)
    return ChunkRecord(cid, list(range(n)), kv, [v.clone() for v in kv], "fp", prefix, inter_t,
                       torch.full((LAYERS,), intra), out, exact=exact)


def request(cands=None) -> Request:
    cands = cands if cands is not None else [[rec("A")], [rec("B")], [rec("C")]]
    return Request(LAYOUT, cands, LAYERS)


def positions(spec: str, req: Request | None = None) -> list[int]:
    return make_strategy(spec).decide(req or request()).plan.initial.tolist()


QUESTION = list(range(35, 40))


def test_full_computes_everything():
    assert positions("full") == list(range(40))


def test_naive_computes_only_the_question():
    assert positions("naive") == QUESTION


def test_prefix_reuses_leading_exact_chunks():
    # A's isolated record is exact (nothing precedes it); B's isolated record is not exact after A.
    assert positions("prefix") == list(range(15, 40))
    exact_b = request([[rec("A")], [rec("B"), rec("B", ["A"], exact=True)], [rec("C")]])
    assert positions("prefix", exact_b) == list(range(25, 40))


def test_a_variant_computed_over_stale_states_is_not_exact():
    """Keyed by the right prefix but captured from a partly recomputed request: every strategy repairs it."""
    stale_b = rec("B", ["A"], inter=[0.1, 0.9])  # captured variant: not exact by default
    req = request([[rec("A")], [stale_b], [rec("C")]])
    assert not is_exact(req, 1, stale_b) and is_exact(req, 1, rec("B", ["A"], exact=True))
    assert positions("prefix", req) == list(range(15, 40))
    assert positions("epic:k=3", req)[:3] == [15, 16, 17]
    craft = make_strategy("cachecraft:alpha=1.0")
    plan = craft.decide(req).plan
    # no CFO-0 shortcut and no credit for the shared prefix: CFO = alpha * CCI, as for an isolated record
    assert plan.cfo[1] == pytest.approx(stale_b.cci()) and plan.cfo[1] > 0
    assert cfo(rec("B", ["A"], inter=[0.1, 0.9], exact=True), ["A"], 1.0) == 0.0


def test_epic_first_k_of_every_chunk_but_the_first():
    assert positions("epic:k=3") == [15, 16, 17, 25, 26, 27] + QUESTION
    assert positions("epic:k=0") == QUESTION


def test_missing_record_falls_back_to_full_for_that_chunk():
    req = request([[rec("A")], [], [rec("C")]])
    for spec in ("naive", "epic:k=2", "cachecraft:alpha=0", "cacheblend:ratio=0"):
        got = set(positions(spec, req))
        assert set(range(15, 25)) <= got and set(QUESTION) <= got, spec
        assert make_strategy(spec).decide(req).records[1] is None


def test_cacheblend_picks_highest_value_deviation_at_check_layer():
    # candidates: B and C (A's isolated record is exact); budget ceil(0.15 * 20) = 3 tokens
    strat = make_strategy("cacheblend:ratio=0.15,check_layer=1")
    plan = strat.decide(request()).plan
    assert isinstance(plan, BlendPlan)
    start = plan.initial
    assert start.tolist() == list(range(15, 40))  # inexact chunks B, C and the question before the check
    assert not plan.wants_observation(0) and plan.wants_observation(1)
    n = start.numel()
    fresh_v = torch.zeros(1, n, 2)
    cached_v = torch.zeros(1, n, 2)
    idx = {p: i for i, p in enumerate(start.tolist())}
    for p, d in {17: 3.0, 30: 5.0, 22: 1.0, 24: 0.5, 37: 99.0}.items():  # 37 is a question token
        fresh_v[0, idx[p], 0] = d
    k = torch.zeros_like(fresh_v)
    assert plan.next_positions(0, start, (k, fresh_v), None) is start
    nxt = plan.next_positions(1, start, (k, fresh_v), (k, cached_v))
    assert nxt.tolist() == [17, 22, 30] + QUESTION
    assert plan.computed_throughout().tolist() == nxt.tolist()


@pytest.mark.parametrize("ratio, budget", [(0.15, 3), (0.5, 10), (0.01, 1), (0.0, 0)])
def test_cacheblend_budget_counts_only_candidate_chunks(ratio, budget):
    """The exact first chunk is no candidate, so it does not inflate the budget (20 candidates, not 30)."""
    plan = make_strategy(f"cacheblend:ratio={ratio}").decide(request()).plan
    assert plan.keep == [budget]
    exact_b = request([[rec("A")], [rec("B", ["A"], exact=True)], [rec("C")]])  # only C is a candidate
    assert make_strategy(f"cacheblend:ratio={ratio}").decide(exact_b).plan.keep == [math.ceil(ratio * 10)]


@pytest.mark.parametrize("spec", ["cacheblend:check_layer=3", "cacheblend:check_layer=9",
                                  "cacheblend:check_layer=2,gradual=1", "cacheblend:gradual=2"])
def test_cacheblend_check_layer_must_leave_a_layer_to_filter_for(spec):
    with pytest.raises(ValueError, match="the model has 4 layers"):
        make_strategy(spec).decide(request())


def test_cacheblend_gradual_filtering_shrinks_over_layers():
    """gradual=2, ratio 0.1, 40 candidate tokens (chunks B..E; A is exact): keep 2r, 1.5r, r of them at
    layers 1, 2, 3, each time re-ranking the survivors by that layer's deviation."""
    n_layers = 16
    layout = Layout(Span(0, 5), [Span(5 + 10 * i, 15 + 10 * i) for i in range(5)], Span(55, 60),
                    list("ABCDE"))
    req = Request(layout, [[rec(c)] for c in "ABCDE"], n_layers)
    plan = make_strategy("cacheblend:ratio=0.1,gradual=2").decide(req).plan
    assert plan.keep == [8, 6, 4]
    assert [plan.wants_observation(layer) for layer in range(5)] == [False, True, True, True, False]
    question = list(range(55, 60))
    positions = plan.initial
    assert positions.tolist() == list(range(15, 60))
    # deviation grows with position at layer 1 (keeps 47..54) and falls with it at layers 2 and 3, so the
    # result is the lowest positions among layer 1's survivors, not the lowest candidates overall
    kept = []
    for layer, dev in ((1, lambda p: p), (2, lambda p: 1000 - p), (3, lambda p: 1000 - p)):
        fresh = torch.zeros(1, positions.numel(), 2)
        fresh[0, :, 0] = dev(positions.float())
        zero = torch.zeros_like(fresh)
        positions = plan.next_positions(layer, positions, (zero, fresh), (zero, zero))
        assert positions.tolist()[-5:] == question
        kept.append(positions.tolist()[:-5])
    assert kept == [list(range(47, 55)), list(range(47, 53)), list(range(47, 51))]
    assert plan.next_positions(4, positions, (zero, zero), None) is positions
    assert plan.computed_throughout().tolist() == positions.tolist()


def test_cacheblend_ratio_one_keeps_every_candidate():
    plan = make_strategy("cacheblend:ratio=1").decide(request()).plan
    start = plan.initial
    v = torch.rand(1, start.numel(), 2)
    assert plan.next_positions(1, start, (v, v), (v, torch.zeros_like(v))).tolist() == start.tolist()


def test_exact_chunks_after_the_plan():
    """A chunk's in-request states are exact iff it and everything before it were exact records in place or
    computed at every layer."""
    stale_b = rec("B", ["A"])
    req = request([[rec("A")], [stale_b], []])  # C uncached: computed at every layer, but after stale B
    d = make_strategy("naive").decide(req)
    assert d.exact_chunks(req) == [True, False, False]
    req = request([[rec("A")], [rec("B", ["A"], exact=True)], []])
    d = make_strategy("naive").decide(req)
    assert d.exact_chunks(req) == [True, True, True]
    d = make_strategy("epic:k=3").decide(request())  # B and C only partly recomputed
    assert d.exact_chunks(request()) == [True, False, False]
    # cacheblend: every candidate is computed until the check layer, only the kept ones at every layer
    d = make_strategy("cacheblend:ratio=0.15").decide(request())
    start = d.plan.initial
    v = torch.rand(1, start.numel(), 2)
    d.plan.next_positions(1, start, (v, v), (v, torch.zeros_like(v)))
    assert d.exact_chunks(request()) == [True, False, False]


def test_cacheblend_key_deviation_option():
    plan = make_strategy("cacheblend:ratio=0.03,deviation=k").decide(request()).plan
    start = plan.initial
    fresh_k = torch.zeros(1, start.numel(), 2)
    fresh_k[0, 3, 1] = 2.0  # position 18
    nxt = plan.next_positions(1, start, (fresh_k, torch.zeros_like(fresh_k)),
                              (torch.zeros_like(fresh_k), torch.zeros_like(fresh_k)))
    assert nxt.tolist() == [18] + QUESTION


def test_kendall_tau_distance():
    assert kendall_tau_distance(["a", "b", "c"], ["a", "b", "c"]) == 0
    assert kendall_tau_distance(["a", "b", "c"], ["c", "b", "a"]) == 1
    assert kendall_tau_distance(["a", "b", "c"], ["b", "a", "c"]) == pytest.approx(1 / 3)
    assert kendall_tau_distance(["a"], ["a"]) == 0


def test_cfo_formula():
    r = rec("C", ["A", "B"], inter=[0.2, 0.6, 0.2], exact=True)  # template, A, B
    cci = r.cci()
    # CCI = sigmoid(mean_l sum_j inter / |C|  /  (intra / |C|^2)) with |C| = 10
    assert cci == pytest.approx(1 / (1 + math.exp(-((1.0 / 10) / (50.0 / 100)))))
    assert cfo(r, ["A", "B"], alpha=1.0) == 0.0  # computed after exactly this prefix
    assert cfo(r, [], alpha=1.0) == pytest.approx(cci)  # nothing shared: beta = 0
    assert cfo(r, ["A"], alpha=1.0) == pytest.approx(cci * (1 - 0.75))  # beta = 0.6 / 0.8
    assert cfo(r, ["B", "A"], alpha=1.0) == pytest.approx(cci)  # all shared but reversed: gamma = 1
    assert cfo(r, ["X", "A", "B"], alpha=0.5) == pytest.approx(0.0)  # same order, beta = 1
    assert cfo(r, [], alpha=100.0) == 1.0  # clamped


def test_cci_grows_with_attention_outside_the_chunk():
    """Cache-Craft eq. 3: the more a chunk's tokens attend outside it relative to inside, the higher its CCI
    (and its CFO, so more of it is recomputed)."""
    low = rec("C", ["A", "B"], inter=[0.05, 0.05, 0.05])
    high = rec("C", ["A", "B"], inter=[0.1, 0.3, 0.3])
    assert high.cci() > low.cci()
    assert cfo(high, [], 1.0) > cfo(low, [], 1.0)
    # the same outside mass weighs more against less attention inside the chunk
    assert rec("C", inter=[0.3], intra=20.0).cci() > rec("C", inter=[0.3], intra=50.0).cci()
    # a record without statistics is assumed fully context-dependent
    bare = ChunkRecord("C", list(range(10)), low.keys, low.values, "fp")
    assert bare.cci() == 1.0 > high.cci()


def test_cachecraft_recomputes_tokens_with_most_outside_attention():
    outside = [0.9, 0.1, 0.8, 0.2, 0.3, 0.05, 0.7, 0.0, 0.0, 0.0]
    req = request([[rec("A")], [rec("B", outside=outside)], [rec("C", outside=outside)]])
    strat = make_strategy("cachecraft:alpha=0.5")
    plan = strat.decide(req).plan
    n_fix = math.ceil(cfo(rec("B"), ["A"], 0.5) * 10)
    top = sorted(sorted(range(10), key=lambda i: -outside[i])[:n_fix])
    want = [15 + i for i in top] + [25 + i for i in top] + QUESTION
    assert plan.initial.tolist() == sorted(want)
    assert plan.cfo[0] == 0.0  # A sits right after the template prefix: exact


def test_cachecraft_chooses_the_variant_with_lowest_cfo():
    iso = rec("C")
    after_ab = rec("C", ["A", "B"], inter=[0.1, 0.45, 0.45], exact=True)
    after_x = rec("C", ["X"], inter=[0.1, 0.9], exact=True)
    req = request([[rec("A")], [rec("B")], [iso, after_x, after_ab]])
    chosen = make_strategy("cachecraft").decide(req).records
    assert chosen[2] is after_ab
    req = request([[rec("A")], [rec("B")], [iso, after_x]])
    assert make_strategy("cachecraft").decide(req).records[2] is iso  # beta(X) = 0: no better than isolated


def test_strategies_are_deterministic():
    for spec in ("full", "prefix", "naive", "epic", "cacheblend", "cachecraft"):
        assert positions(spec) == positions(spec), spec


@pytest.mark.parametrize("spec", ["nope", "epic:k", "epic:k=-1", "cacheblend:ratio=2", "cachecraft:beta=1",
                                  "cacheblend:deviation=q", "cacheblend:gradual=-1", "cacheblend:check_layer=-1",
                                  "cacheblend:check_layer=1.5"])
def test_bad_strategy_specs(spec):
    with pytest.raises(ValueError):
        make_strategy(spec)


def test_variants_are_chosen_from_their_names_before_loading():
    stored = ["0123abcd", "isolated", "ffff0000"]
    focus, craft, ape = (make_strategy(s) for s in ("focus", "cachecraft", "ape"))
    assert focus.wanted_variants(stored, "ffff0000") == ["ffff0000"]  # computed in place: exact candidate
    assert focus.wanted_variants(stored, "99999999") == ["isolated"]
    assert focus.wanted_variants(["0123abcd"], "99999999") == ["0123abcd"]
    assert craft.wanted_variants(stored, "99999999") == stored  # CFO compares every variant's statistics
    assert ape.wanted_variants(stored, "ffff0000") == ["isolated"] and ape.wanted_variants(["0123abcd"], "x") == []
