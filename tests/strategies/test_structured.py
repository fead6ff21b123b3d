"""Parallel (Set-Based Prompting) and graph (Graph-KV) layouts: hand-made layouts and the packaged
SmolLM2 model."""

from __future__ import annotations

import random

import pytest
import torch

from chunkcache.engine.decode import generate
from chunkcache.engine.prompt import Layout, Span
from chunkcache.engine.reuse import ReuseEngine
from chunkcache.kv.build import isolated_record
from chunkcache.kv.record import ISOLATED, variant_name
from chunkcache.strategies import make_strategy
from chunkcache.strategies.base import Request
from chunkcache.strategies.layouts import graph_placement, graph_variant_ids, topological_order

PASSAGES = [
    "Title: Harbor\nThe harbor office keeps the ferry timetable and the tide tables.\n\n",
    "Title: Ferry\nThe night ferry to Skerry Island leaves at 23:40 from pier four.\n\n",
    "Title: Pier four\nPier four was rebuilt in 2019 after a storm tore away its wooden deck and rails.\n\n",
    "Title: Tides\nSpring tides at the harbor reach four metres.\n\n",
]
QUESTION = "When does the night ferry leave, and from which pier?"


def test_graph_placement_on_a_hand_made_layout():
    """Chunks 0 and 1 are sources of 2, 2 is the source of 3: 2 starts after the longer of 0 and 1 and sees
    only them (and the prefix and itself); 3 starts after 2 and sees only 2; the question sees all."""
    layout = Layout(Span(0, 4), [Span(4, 10), Span(10, 13), Span(13, 18), Span(18, 20)], Span(20, 23),
                    list("abcd"), [(0, 2), (1, 2), (2, 3)])
    pl = graph_placement(layout, [[], [], [0, 1], [2]])
    p = 4
    assert pl.positions.tolist() == (list(range(4)) + list(range(p, p + 6)) + list(range(p, p + 3))
                                     + list(range(p + 6, p + 11)) + list(range(p + 11, p + 13))
                                     + list(range(p + 13, p + 16)))
    mod = pl.attention(torch.tensor([11, 15, 19, 22]), 23)  # tokens of chunks 1, 2 and 3; a question token
    seen = [set(row.nonzero().flatten().tolist()) for row in mod.visible]
    prefix = set(range(4))
    assert seen[0] == prefix | set(range(10, 13))
    assert seen[1] == prefix | set(range(4, 10)) | set(range(10, 13)) | set(range(13, 18))
    assert seen[2] == prefix | set(range(13, 18)) | set(range(18, 20))
    assert seen[3] == set(range(23))
    assert pl.context is None  # no temperature: attention is plain inside the mask
    with pytest.raises(ValueError, match="before it"):
        graph_placement(layout, [[], [2], [], []])


def test_topological_order_ignores_the_callers_order_and_breaks_cycles():
    ids = ["d", "b", "a", "c"]
    order, kept = topological_order(ids, [(0, 2), (1, 2)])  # d -> a, b -> a
    assert [ids[i] for i in order] == ["b", "c", "d", "a"]
    assert kept == [(0, 2), (1, 2)]
    rng = random.Random(0)
    for _ in range(5):
        perm = list(range(4))
        rng.shuffle(perm)
        shuffled = [ids[i] for i in perm]
        inv = {old: new for new, old in enumerate(perm)}
        o, _ = topological_order(shuffled, [(inv[0], inv[2]), (inv[1], inv[2])])
        assert [shuffled[i] for i in o] == ["b", "c", "d", "a"]
    order, kept = topological_order(["x", "y"], [(0, 1), (1, 0)])  # a cycle: one edge goes
    assert order == [0, 1] and kept == [(0, 1)]
    with pytest.raises(ValueError, match="outside"):
        topological_order(["x"], [(0, 1)])


def test_graph_chooses_exact_graph_variants_and_computes_targets_without_one():
    layout = Layout(Span(0, 2), [Span(2, 5), Span(5, 9)], Span(9, 11), ["s", "t"], [(0, 1)])
    graph = make_strategy("graph")
    names = graph.in_place_variants(layout)
    assert names == [ISOLATED, variant_name(graph_variant_ids(["s"]))]
    assert graph.wanted_variants([ISOLATED, "other"], names[1]) == []
    decision = graph.decide(Request(layout, [[], []], 2))
    assert decision.plan.initial.tolist() == list(range(2, 11))
    assert decision.identities(Request(layout, [[], []], 2)) == [([], True), (graph_variant_ids(["s"]), True)]


@pytest.fixture(scope="module")
def engine(smol):
    model, tok = smol
    return ReuseEngine(model, tok, store_dtype=torch.float32)


@pytest.fixture(scope="module")
def passages(engine):
    return [engine.encode_chunk(p)[1] for p in PASSAGES], engine.template.encode_question(QUESTION)


def test_parallel_is_invariant_to_chunk_order_bit_for_bit(engine, passages):
    chunks, q = passages
    for c in chunks:  # every order then reads the same stored records (a chunk computed inside a request rounds
        engine.precompute(c)  # differently from one computed alone: the next test bounds that difference)
    rng = random.Random(1)
    orders = [list(range(4))] + [rng.sample(range(4), 4) for _ in range(3)]
    runs = []
    for o in orders:
        pre = engine.prefill([chunks[i] for i in o], q, make_strategy("parallel"), reserve=6)
        runs.append((pre.result.logits, list(generate(engine.model, pre.result, 6, set()))))
        assert pre.layout.chunk_ids == sorted(pre.layout.chunk_ids) and sorted(pre.order) == [0, 1, 2, 3]
        assert [engine.chunk_id(chunks[o[i]]) for i in pre.order] == pre.layout.chunk_ids
    for logits, tokens in runs[1:]:
        assert torch.equal(logits, runs[0][0]) and tokens == runs[0][1]
    naive = [engine.prefill([chunks[i] for i in o], q, make_strategy("naive")).result.logits for o in orders[:2]]
    assert torch.max(torch.abs(naive[0] - naive[1])).item() > 1e-2  # a sequential prompt does depend on it


def test_parallel_reuses_records_exactly_and_captures_missed_chunks_as_isolated(smol, passages):
    """With an empty store every chunk is computed in the request at its parallel positions and stored as
    its isolated record (exact); a second request reuses them, computes only the question and gives the
    same logits; the captured record equals one computed alone."""
    model, tok = smol
    eng = ReuseEngine(model, tok, store_dtype=torch.float32)
    chunks, q = passages
    cold = eng.prefill(chunks, q, make_strategy("parallel"))
    assert cold.stats.chunks_missed == 4 and cold.stats.recompute_fraction == 1.0
    warm = eng.prefill(chunks[::-1], q, make_strategy("parallel"))
    assert warm.stats.chunks_hit == 4 and warm.stats.recompute_fraction == 0.0
    assert torch.max(torch.abs(warm.result.logits - cold.result.logits)).item() < 1e-4
    cid = eng.chunk_id(chunks[1])
    assert eng.store.variants(cid) == [ISOLATED]
    stored = eng.store.get(cid, ISOLATED)
    ref = isolated_record(model, eng.template, eng.prefix, chunks[1], cid, torch.float32)
    assert stored.exact and stored.prefix_ids == []
    for layer in (0, model.shape.n_layers - 1):
        assert torch.max(torch.abs(stored.keys[layer] - ref.keys[layer])).item() < 1e-4


def _target_keys(pre, index: int) -> torch.Tensor:
    k = pre.order.index(index)
    span = pre.layout.chunks[k]
    return torch.stack([kp[:, span.start:span.end] for kp in pre.result.keys_pre])


def test_graph_target_sees_only_its_sources(smol, passages):
    """Chunk 2 (pier four) is the target of chunk 1 (the ferry): its states change when the ferry passage
    changes and do not when chunk 3 (not a source) does."""
    model, tok = smol
    chunks, q = passages
    other = ReuseEngine(model, tok, store_dtype=torch.float32).encode_chunk(
        "Title: Tides\nNeap tides at the harbor reach one metre only.\n\n")[1]
    ferry2 = ReuseEngine(model, tok, store_dtype=torch.float32).encode_chunk(
        "Title: Ferry\nThe day ferry to Skerry Island leaves at 09:15 from pier two.\n\n")[1]

    def target(cs):
        eng = ReuseEngine(model, tok, store_dtype=torch.float32)
        return _target_keys(eng.prefill(cs, q, make_strategy("graph"), edges=[(1, 2)]), 2)

    base = target(chunks)
    assert torch.max(torch.abs(target([chunks[0], chunks[1], chunks[2], other]) - base)).item() < 1e-4
    assert torch.max(torch.abs(target([chunks[0], ferry2, chunks[2], chunks[3]]) - base)).item() > 1e-2
    isolated = ReuseEngine(model, tok, store_dtype=torch.float32)
    alone = _target_keys(isolated.prefill(chunks, q, make_strategy("parallel")), 2)
    assert torch.max(torch.abs(alone[1:] - base[1:])).item() > 1e-2  # the edge changes the target's states


def test_graph_variant_is_stored_then_reused_exactly(smol, passages):
    model, tok = smol
    eng = ReuseEngine(model, tok, store_dtype=torch.float32)
    chunks, q = passages
    for c in chunks:
        eng.precompute(c)
    edges = [(1, 2), (0, 2)]
    first = eng.prefill(chunks, q, make_strategy("graph"), edges=edges)
    target = len(chunks[2]) / sum(map(len, chunks))
    assert first.stats.recompute_fraction == pytest.approx(target)
    name = variant_name(graph_variant_ids([eng.chunk_id(chunks[0]), eng.chunk_id(chunks[1])]))
    assert name in eng.store.variants(eng.chunk_id(chunks[2]))
    again = eng.prefill(chunks[::-1], q, make_strategy("graph"), edges=[(3 - s, 3 - t) for s, t in edges])
    assert again.stats.recompute_fraction == 0.0
    assert torch.max(torch.abs(again.result.logits - first.result.logits)).item() < 1e-4
    plain = eng.prefill(chunks, q, make_strategy("graph"))
    par = eng.prefill(chunks, q, make_strategy("parallel"))
    assert torch.equal(plain.result.logits, par.result.logits)  # no edges: the parallel layout


def test_without_the_template_prefix_nothing_is_captured_as_isolated():
    """A plain prompt's layout (engine/plain.py) has no template prefix: a chunk placed in parallel there
    did not see what isolated records are computed after, so it must not be stored as one."""
    layout = Layout(Span(0, 0), [Span(0, 4), Span(4, 9)], Span(9, 12), ["s", "t"], [(0, 1)])
    for spec in ("parallel", "ape", "graph"):
        req = Request(layout, [[], []], 2)
        assert make_strategy(spec).decide(req).identities(req) == [None, None], spec
