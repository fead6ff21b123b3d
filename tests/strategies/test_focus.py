"""``focus``: question-focused selection on hand-made layouts, and its probe on the real model."""

from __future__ import annotations

import pytest
import torch

from chunkcache.engine.executor import partial_prefill
from chunkcache.engine.probe import QuestionAttention, probe_question
from chunkcache.engine.prompt import Layout, Span
from chunkcache.kv.record import ChunkRecord
from chunkcache.strategies import make_strategy
from chunkcache.strategies.base import Plan, Request

LAYERS = 8
# template prefix 0..4, chunks A 5..14, B 15..24, C 25..34, question 35..39
LAYOUT = Layout(Span(0, 5), [Span(5, 15), Span(15, 25), Span(25, 35)], Span(35, 40), ["A", "B", "C"])
QUESTION = list(range(35, 40))


def rec(cid: str, prefix: list[str] | None = None, exact: bool | None = None) -> ChunkRecord:
    kv = [torch.zeros(1, 10, 2) for _ in range(LAYERS)]
    return ChunkRecord(cid, list(range(10)), kv, [v.clone() for v in kv], "fp", prefix or [], exact=exact)


def request(scores: torch.Tensor, cands=None, calls: list | None = None) -> Request:
    def probe(records, layers, last_row):
        if calls is not None:
            calls.append((records, layers, last_row))
        return scores

    cands = cands if cands is not None else [[rec("A")], [rec("B")], [rec("C")]]
    return Request(LAYOUT, cands, LAYERS, probe)


def test_global_top_tokens_by_question_attention():
    scores = torch.zeros(40)
    scores[[3, 8, 30, 18, 27, 12]] = torch.tensor([9.0, 8.0, 5.0, 4.0, 3.0, 0.5])
    calls: list = []
    plan = make_strategy("focus:ratio=0.15").decide(request(scores, calls=calls)).plan
    # budget ceil(0.15 * 20 stale tokens of B and C) = 3; A (exact after the template) and the template
    # prefix (3) are never candidates, however much the question reads them
    assert plan.initial.tolist() == [18, 27, 30] + QUESTION
    (records, layers, last_row), = calls
    assert [r.chunk_id for r in records] == ["A", "B", "C"]
    assert layers == list(range(8)) and last_row  # every layer, the last prompt row by default


def test_ties_break_by_position_and_layers_follow_from_layer():
    calls: list = []
    spec = "focus:ratio=0.1,from_layer=0.25,rows=all"
    plan = make_strategy(spec).decide(request(torch.ones(40), calls=calls)).plan
    assert plan.initial.tolist() == [15, 16] + QUESTION
    assert calls[0][1:] == (list(range(2, 8)), False)


def test_missing_record_is_computed_and_exact_variants_are_not_candidates():
    scores = torch.arange(40, dtype=torch.float32)  # later positions read more
    cands = [[rec("A")], [], [rec("C"), rec("C", ["A", "B"], exact=True)]]  # B missing, C has an exact variant
    decision = make_strategy("focus:ratio=0.5").decide(request(scores, cands))
    assert decision.records[1] is None and decision.records[2].prefix_ids == ["A", "B"]
    assert decision.plan.initial.tolist() == list(range(15, 25)) + QUESTION  # nothing stale left to repair
    # a variant captured after A, B from a partly recomputed request is not exact: C is repaired
    cands[2] = [rec("C"), rec("C", ["A", "B"])]
    plan = make_strategy("focus:ratio=0.5").decide(request(scores, cands)).plan
    assert plan.initial.tolist() == list(range(15, 25)) + list(range(30, 35)) + QUESTION


def test_ratio_zero_is_naive_and_bad_parameters_are_refused():
    assert make_strategy("focus:ratio=0").decide(request(torch.ones(40))).plan.initial.tolist() == QUESTION
    with pytest.raises(ValueError, match="ratio"):
        make_strategy("focus:ratio=1.5")
    with pytest.raises(ValueError, match="from_layer"):
        make_strategy("focus:from_layer=1")
    with pytest.raises(ValueError, match="rows"):
        make_strategy("focus:rows=first")
    with pytest.raises(ValueError, match="probe"):
        make_strategy("focus").decide(Request(LAYOUT, [[rec("A")], [rec("B")], [rec("C")]], LAYERS))


def _chunks(tok) -> tuple[list[list[int]], list[int]]:
    texts = ["Title: Alpha\nThe alpha key opens the north gate.\n\n",
             "Title: Beta\nThe beta key was lost in the river last spring.\n\n",
             "Title: Gamma\nNobody remembers what the gamma key opens.\n\n"]
    chunks = [tok(t, add_special_tokens=False).input_ids for t in texts]
    return chunks, tok("Question: What does the alpha key open?\nAnswer:", add_special_tokens=False).input_ids


def test_probe_over_exact_records_equals_the_full_prefill_attention(smol_engine):
    """With every record exact (captured from a full prefill), the probe's question attention must be the
    question rows' attention of a full prefill of the same prompt."""
    eng = smol_engine
    chunks, q = _chunks(eng.tokenizer)
    pre = eng.prefill(chunks, q, make_strategy("full"), capture_variants=True)
    records = [eng.store.get(cid, v) for cid in pre.layout.chunk_ids for v in eng.store.variants(cid)
               if eng.store.get(cid, v).prefix_ids == pre.layout.chunk_ids[:pre.layout.chunk_ids.index(cid)]]
    assert len(records) == 3
    layers = list(range(eng.model.shape.n_layers))
    for last_row in (False, True):
        probed, cost = probe_question(eng.model, pre.ids, pre.layout, eng.prefix, records, layers, last_row)
        assert cost.computed_per_layer == [len(q)] * len(layers)
        reference = QuestionAttention(pre.layout, layers, last_row)
        partial_prefill(eng.model, pre.ids, pre.layout, eng.prefix, [None] * 3,
                        Plan(torch.arange(pre.layout.length)), stats=reference)
        assert probed.sum().item() == pytest.approx(1.0, abs=1e-4)  # mean of softmax rows
        assert torch.allclose(probed, reference.scores, atol=1e-5)


def test_probe_leaves_chunks_without_a_record_out(smol_engine):
    """A chunk with no record is neither computed by the probe (the plan computes it anyway) nor read by
    the question: its scores are 0 and the rest is a distribution over what the question may see."""
    eng = smol_engine
    chunks, q = _chunks(eng.tokenizer)
    pre = eng.prefill(chunks, q, make_strategy("full"), capture_variants=True)
    records = [next(eng.store.get(cid, v) for v in eng.store.variants(cid)) for cid in pre.layout.chunk_ids]
    records[1] = None
    layers = list(range(eng.model.shape.n_layers))
    probed, cost = probe_question(eng.model, pre.ids, pre.layout, eng.prefix, records, layers, True)
    assert cost.computed_per_layer == [len(q)] * len(layers)
    gap = pre.layout.chunks[1]
    assert probed[gap.start:gap.end].abs().max().item() == 0.0
    assert probed.sum().item() == pytest.approx(1.0, abs=1e-4)
    every = [next(eng.store.get(cid, v) for v in eng.store.variants(cid)) for cid in pre.layout.chunk_ids]
    seen = probe_question(eng.model, pre.ids, pre.layout, eng.prefix, every, layers, True)[0]
    assert seen[gap.start:gap.end].sum().item() > 0  # with its record, the question does read that chunk


def test_ratio_one_equals_full(smol):
    from chunkcache.engine.reuse import ReuseEngine

    eng = ReuseEngine(*smol, store_dtype=torch.float32)  # its own store: only isolated records
    chunks, q = _chunks(eng.tokenizer)
    for c in chunks:
        eng.precompute(c)
    full = eng.prefill(chunks, q, make_strategy("full")).result.logits
    focus = eng.prefill(chunks, q, make_strategy("focus:ratio=1"))
    naive = eng.prefill(chunks, q, make_strategy("naive")).result.logits
    assert focus.stats.recompute_fraction == pytest.approx(1 - len(chunks[0]) / sum(map(len, chunks)))
    # the cost counts the probe too: the question once in the probe, then with the repaired tokens
    assert set(focus.stats.computed_per_layer) == {len(chunks[1]) + len(chunks[2]) + 2 * len(q)}
    assert torch.allclose(focus.result.logits, full, atol=1e-3)
    assert not torch.allclose(naive, full, atol=1e-3)  # the identity above is not trivial


def test_chunk_unit_recomputes_whole_chunks_by_attention_mass_then_tokens():
    scores = torch.zeros(40)
    scores[15:25] = 0.1  # B: mass 1.0 spread evenly
    scores[30] = 0.6  # C: one salient token, mass 0.6
    scores[26] = 0.3
    # budget ceil(0.6 * 20 stale tokens) = 12: all of B (10), then C's two best tokens
    plan = make_strategy("focus:ratio=0.6,unit=chunk").decide(request(scores)).plan
    assert plan.initial.tolist() == list(range(15, 25)) + [26, 30] + QUESTION
    # a budget below one chunk falls back to tokens
    plan = make_strategy("focus:ratio=0.1,unit=chunk").decide(request(scores)).plan
    assert plan.initial.tolist() == [26, 30] + QUESTION
    with pytest.raises(ValueError, match="unit"):
        make_strategy("focus:unit=doc")
