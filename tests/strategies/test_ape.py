"""APE (arXiv 2502.05431): placement, the tempered attention against the paper's appendix C.4 merge, and
its identities on the packaged SmolLM2 model."""

from __future__ import annotations

import pytest
import torch

from chunkcache.engine.executor import partial_prefill
from chunkcache.engine.prompt import Layout, Span
from chunkcache.kv.build import isolated_record
from chunkcache.kv.record import ChunkRecord
from chunkcache.models.base import AttentionMod
from chunkcache.strategies import make_strategy
from chunkcache.strategies.base import Request
from chunkcache.strategies.layouts import PlacedPlan

PASSAGES = [
    "Title: Ob River\nThe Ob is a major river in western Siberia. Its largest tributary is the Irtysh.\n\n",
    "Title: Irtysh\nThe Irtysh rises in the Altai mountains and flows through Omsk before joining the Ob.\n\n",
    "Title: Omsk\nOmsk is a city on the Irtysh, known for its oil refinery and its theatre.\n\n",
]
QUESTION = "Which city on the largest tributary of the Ob has an oil refinery?"


def test_placement_puts_chunks_in_parallel_and_question_after_the_longest():
    layout = Layout(Span(0, 5), [Span(5, 15), Span(15, 22), Span(22, 30)], Span(30, 34), ["A", "B", "C"])
    plan = make_strategy("ape").decide(Request(layout, [[], [], []], 4)).plan
    assert isinstance(plan, PlacedPlan)
    pl = plan.placement
    assert pl.positions.tolist() == (list(range(5)) + list(range(5, 15)) + list(range(5, 12))
                                     + list(range(5, 13)) + list(range(15, 19)))
    assert pl.context.tolist() == [False] * 5 + [True] * 25 + [False] * 4
    mod = pl.attention(torch.tensor([20, 33]), 34)  # a token of chunk B, a question token
    assert mod.visible[0].nonzero().flatten().tolist() == list(range(5)) + list(range(15, 22))
    assert mod.visible[1].all()
    assert mod.tempered.tolist() == [False, True]
    assert (pl.temperature, pl.scale) == (0.9, 0.9)


def test_ape_computes_only_the_question_and_uses_isolated_records():
    layout = Layout(Span(0, 5), [Span(5, 15), Span(15, 25)], Span(25, 30), ["A", "B"])
    kv = [torch.zeros(1, 10, 2)] * 4
    isolated = ChunkRecord("B", list(range(10)), kv, kv, "fp")
    after_a = ChunkRecord("B", list(range(10)), kv, kv, "fp", ["A"])
    decision = make_strategy("ape").decide(Request(layout, [[isolated], [after_a, isolated]], 4))
    assert decision.plan.initial.tolist() == list(range(25, 30))
    assert decision.records[0] is isolated and decision.records[1] is isolated
    only_captured = make_strategy("ape").decide(Request(layout, [[isolated], [after_a]], 4))
    assert only_captured.records[1] is None  # computed in the request, in parallel (see the model test)
    assert only_captured.plan.initial.tolist() == list(range(15, 30))


@pytest.mark.parametrize("spec", ["ape:T=0", "ape:S=-1", "ape:R=1"])
def test_bad_ape_specs(spec):
    with pytest.raises(ValueError):
        make_strategy(spec)


def _c4_reference(q, k, v, q_pos, context, tempered, scaling, t, s):
    """APE appendix C.4, head by head and row by row: attention over the context keys with temperature t,
    over the other visible keys plainly, merged with softmax([s·t·LSE_context, LSE_other])."""
    groups = q.shape[0] // k.shape[0]
    out = torch.zeros(q.shape[1], q.shape[0], q.shape[2], dtype=torch.float64)
    for h in range(q.shape[0]):
        kh, vh = k[h // groups].double(), v[h // groups].double()
        for r, pos in enumerate(q_pos.tolist()):
            scores = (kh[:pos + 1] @ q[h, r].double()) * scaling
            ctx = context[:pos + 1]
            if not tempered[r]:
                out[r, h] = torch.softmax(scores, 0) @ vh[:pos + 1]
                continue
            sc, so = scores[ctx] / t, scores[~ctx]
            o_c, o_o = torch.softmax(sc, 0) @ vh[:pos + 1][ctx], torch.softmax(so, 0) @ vh[:pos + 1][~ctx]
            w = torch.softmax(torch.stack([s * t * torch.logsumexp(sc, 0), torch.logsumexp(so, 0)]), 0)
            out[r, h] = w[0] * o_c + w[1] * o_o
    return out.reshape(q.shape[1], -1)


def test_tempered_attention_matches_the_papers_merge(smol):
    model = smol[0]
    sh = model.shape
    gen = torch.Generator().manual_seed(0)
    k_len = 7
    q = torch.randn(sh.n_heads, 3, sh.head_dim, generator=gen)
    k = torch.randn(sh.n_kv_heads, k_len, sh.head_dim, generator=gen)
    v = torch.randn(sh.n_kv_heads, k_len, sh.head_dim, generator=gen)
    q_pos = torch.tensor([3, 5, 6])
    context = torch.tensor([False, True, True, True, True, False, False])
    tempered = torch.tensor([False, True, True])  # row 0 is a context token: plain attention
    for t, s in [(0.5, 0.8), (0.9, 0.9), (1.0, 0.3), (2.0, 1.0)]:
        got = model.attend(0, q, k, v, q_pos, k_len, AttentionMod(None, context, tempered, t, s))
        want = _c4_reference(q, k, v, q_pos, context, tempered, model.scaling, t, s)
        assert torch.allclose(got.double(), want, atol=1e-5), (t, s)
    plain = model.attend(0, q, k, v, q_pos, k_len)
    identity = model.attend(0, q, k, v, q_pos, k_len, AttentionMod(None, context, tempered, 1.0, 1.0))
    assert torch.allclose(identity, plain, atol=1e-6)


@pytest.fixture(scope="module")
def equal_chunks(smol_engine):
    """The passages cut to one token length, with isolated records stored."""
    eng = smol_engine
    ids = [eng.encode_chunk(p)[1] for p in PASSAGES]
    n = min(len(c) for c in ids)
    chunks = [c[:n] for c in ids]
    for c in chunks:
        eng.precompute(c)
    return chunks, eng.template.encode_question(QUESTION)


def test_ape_identity_on_one_chunk_equals_naive(smol_engine, equal_chunks):
    """T = S = 1 and one chunk: the parallel layout is the sequential one, so APE is `naive`."""
    eng = smol_engine
    chunks, q = equal_chunks
    ape = eng.prefill(chunks[:1], q, make_strategy("ape:T=1,S=1"))
    naive = eng.prefill(chunks[:1], q, make_strategy("naive"))
    assert torch.max(torch.abs(ape.result.logits - naive.result.logits)).item() < 1e-4
    assert ape.stats.context_computed_per_layer == [0] * eng.model.shape.n_layers


def test_ape_is_invariant_to_the_order_of_equal_chunks(smol_engine, equal_chunks):
    eng = smol_engine
    chunks, q = equal_chunks
    orders = [(0, 1, 2), (2, 0, 1), (1, 2, 0)]
    ape = [eng.prefill([chunks[i] for i in o], q, make_strategy("ape")).result.logits for o in orders]
    for other in ape[1:]:
        assert torch.max(torch.abs(other - ape[0])).item() < 1e-4
    naive = [eng.prefill([chunks[i] for i in o], q, make_strategy("naive")).result.logits for o in orders[:2]]
    assert torch.max(torch.abs(naive[1] - naive[0])).item() > 1e-2  # sequential placement does depend on it
    default = eng.prefill(chunks, q, make_strategy("ape"))
    identity = eng.prefill(chunks, q, make_strategy("ape:T=1,S=1"))
    assert torch.max(torch.abs(default.result.logits - identity.result.logits)).item() > 1e-3  # T, S act


def test_uncached_chunk_is_computed_as_its_isolated_record(smol_engine, equal_chunks):
    """A chunk without a record is computed in the request seeing only the shared prefix and itself at the
    parallel positions: its K (pre-RoPE) and V equal its isolated record's."""
    eng = smol_engine
    chunks, q = equal_chunks
    fresh = eng.encode_chunk("Title: Novosibirsk\nNovosibirsk lies on the Ob, downstream of Barnaul.\n\n")[1]
    order = [chunks[0], fresh, chunks[2]]
    ids, layout = eng.template.assemble(order, q, [eng.chunk_id(c) for c in order])
    cands = eng.candidates(layout.chunk_ids[:1]) + [[]] + eng.candidates(layout.chunk_ids[2:])
    decision = make_strategy("ape").decide(Request(layout, cands, eng.model.shape.n_layers))
    assert decision.records[1] is None
    result = partial_prefill(eng.model, ids, layout, eng.prefix, decision.records, decision.plan)
    ref = isolated_record(eng.model, eng.template, eng.prefix, fresh, layout.chunk_ids[1], torch.float32)
    span = layout.chunks[1]
    for layer in range(eng.model.shape.n_layers):
        assert torch.max(torch.abs(result.keys_pre[layer][:, span.start:span.end] - ref.keys[layer])) < 1e-4
        assert torch.max(torch.abs(result.values[layer][:, span.start:span.end] - ref.values[layer])) < 1e-4


def test_decode_continues_after_the_placed_question(smol_engine):
    """After a parallel prefill, the first decoded token sits at the question's last position + 1, not at
    its slot index: its layer-0 key in the KV is rotated to that position."""
    from chunkcache.engine.decode import generate
    from chunkcache.models.rope import apply_rope

    eng = smol_engine
    texts = ["Title: Alpha\nThe alpha key opens the north gate of the old city wall.\n\n",
             "Title: Beta\nThe beta key was lost in the river during the spring flood.\n\n"]
    chunks = [eng.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    for c in chunks:
        eng.precompute(c)
    q = eng.tokenizer("Question: What does the alpha key open?\nAnswer:", add_special_tokens=False).input_ids
    pre = eng.prefill(chunks, q, make_strategy("ape"), reserve=4)
    placed = int(pre.decision.plan.placement.positions.max()) + 1
    assert placed < pre.layout.length and pre.result.rope_position(pre.layout.length) == placed
    first = list(generate(eng.model, pre.result, 2, set()))[0]
    with torch.inference_mode():
        _, k, _ = eng.model.qkv(0, eng.model.embed(torch.tensor([first])))
        cos, sin = pre.result.rotary.get(eng.model.layer_type(0))
        want = apply_rope(k, cos[placed:placed + 1], sin[placed:placed + 1])[:, 0]
    assert torch.allclose(pre.result.keys[0][:, pre.layout.length], want, atol=1e-5)
