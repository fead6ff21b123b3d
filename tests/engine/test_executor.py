"""The partial-prefill executor's identities (issue: Chunk-cache core, item 3) on the packaged model."""

from __future__ import annotations

import pytest
import torch

from chunkcache.engine.decode import generate
from chunkcache.engine.executor import partial_prefill
from chunkcache.strategies import make_strategy
from chunkcache.strategies.base import Plan, Request

PASSAGES = [
    "Title: Lake Ilmen\nLake Ilmen is a lake in the Novgorod region of Russia. The river Volkhov flows out of it.\n\n",
    "Title: Volkhov\nThe Volkhov river flows north from Lake Ilmen to Lake Ladoga, passing the town of Kirishi.\n\n",
    "Title: Kirishi\nKirishi is a town known for its oil refinery, one of the largest in Russia.\n\n",
]


@pytest.fixture(scope="module")
def prompt(smol_engine):
    eng = smol_engine
    chunks = [eng.encode_chunk(p)[1] for p in PASSAGES]
    for c in chunks:
        eng.precompute(c)
    q = eng.template.encode_question("Which town on the river that leaves Lake Ilmen has a refinery?")
    return chunks, q


@pytest.fixture(scope="module")
def fresh(smol_engine, prompt):
    """(ids, layout, full prefill computed from scratch) of the prompt, records unused."""
    eng = smol_engine
    chunks, q = prompt
    ids, layout = eng.template.assemble(chunks, q, [eng.chunk_id(c) for c in chunks])
    return ids, layout, partial_prefill(eng.model, ids, layout, None, [None] * 3, Plan(torch.arange(len(ids))))


def test_full_matches_transformers(smol_engine, prompt):
    eng = smol_engine
    chunks, q = prompt
    pre = eng.prefill(chunks, q, make_strategy("full"))
    with torch.inference_mode():
        ref = eng.model.hf(pre.ids[None]).logits[0, -1].float()
    assert torch.max(torch.abs(pre.result.logits - ref)).item() < 1e-3


def _bf16_bound(a: torch.Tensor) -> float:
    """Error of a bf16-stored pre-RoPE tensor after rotation (rotation preserves norms per pair)."""
    return (a.abs().amax() * 2 ** -8 * 2).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_record_placed_at_a_new_offset(smol_engine, fresh, dtype):
    """Isolated records of chunks 1 and 2, computed right after the template prefix, placed after other
    chunks (keys rotated to positions they were not computed at); only the question is computed. Layer-0 K
    and V depend only on the token and its position, so the placed entries equal a full prefill's there;
    deeper layers differ (the records never saw the chunks now before them), so the check is not vacuous."""
    eng = smol_engine
    ids, layout, fresh = fresh
    p = len(eng.template.prefix_ids)
    # the engine stores fp32 records; rounding them gives what a bf16 store holds
    recs = [eng.store.get(cid).to("cpu", dtype).to("cpu", torch.float32) for cid in layout.chunk_ids]
    reused = partial_prefill(eng.model, ids, layout, eng.prefix, recs, Plan(layout.question.range()))
    assert reused.computed_per_layer[0] == len(layout.question)
    for span in layout.chunks[1:]:
        assert span.start > p  # not where the record was computed
        for fresh_t, reused_t in ((fresh.keys, reused.keys), (fresh.values, reused.values)):
            a, b = fresh_t[0][:, span.start:span.end], reused_t[0][:, span.start:span.end]
            tol = 1e-4 if dtype is torch.float32 else _bf16_bound(a)
            assert torch.max(torch.abs(a - b)).item() <= tol
        deep = [torch.max(torch.abs(fresh.keys[layer][:, span.start:span.end]
                                    - reused.keys[layer][:, span.start:span.end])).item()
                for layer in range(1, eng.model.shape.n_layers)]
        assert min(deep) > 1e-2, deep


def test_prefix_over_exact_variants_equals_full(smol_engine):
    """Variants captured from a full request are exact; `prefix` then reuses every chunk, computes only the
    question, and gives full prefill's logits."""
    eng = smol_engine
    chunks = [eng.encode_chunk(t.replace("Title:", "Entry:"))[1] for t in PASSAGES]
    q = eng.template.encode_question("Where does the Volkhov flow?")
    full = eng.prefill(chunks, q, make_strategy("full"), capture_variants=True)
    pre = eng.prefill(chunks, q, make_strategy("prefix"))
    assert all(r is not None and r.exact for r in pre.decision.records)
    assert pre.decision.plan.initial.tolist() == pre.layout.question.range().tolist()
    assert torch.max(torch.abs(pre.result.logits - full.result.logits)).item() < 1e-4


def test_cacheblend_ratio_one_equals_full(smol_engine, fresh):
    """Keeping every candidate token recomputes chunks 1 and 2 at every layer over chunk 0's exact record:
    full prefill's logits, and every chunk's states are exact."""
    eng = smol_engine
    ids, layout, full = fresh
    req = Request(layout, eng.candidates(layout.chunk_ids), eng.model.shape.n_layers)
    assert all(c[0].variant == "isolated" for c in req.candidates)
    d = make_strategy("cacheblend:ratio=1").decide(req)
    out = partial_prefill(eng.model, ids, layout, eng.prefix, d.records, d.plan)
    assert out.context_computed_per_layer[-1] == len(layout.chunks[1]) + len(layout.chunks[2])
    assert torch.max(torch.abs(out.logits - full.logits)).item() < 1e-4
    assert d.exact_chunks(req) == [True, True, True]


def test_reuse_does_not_modify_shared_records(smol_engine, prompt):
    eng = smol_engine
    chunks, q = prompt
    cid = eng.chunk_id(chunks[2])
    before = [k.clone() for k in eng.store.get(cid).keys]
    eng.prefill(chunks, q, make_strategy("cachecraft:alpha=1.0"))
    after = eng.store.get(cid).keys
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_greedy_decode_matches_transformers_generate(smol_engine, prompt):
    eng = smol_engine
    chunks, q = prompt
    pre = eng.prefill(chunks, q, make_strategy("full"), reserve=12)
    ours = list(generate(eng.model, pre.result, 12, stop_ids=eng.stop_ids))
    with torch.inference_mode():
        ref = eng.model.hf.generate(pre.ids[None], max_new_tokens=12, do_sample=False)[0, len(pre.ids):].tolist()
    while ref and ref[-1] in eng.stop_ids:  # transformers keeps the stop token, we do not yield it
        ref.pop()
    assert ours and ours == ref


def test_plan_must_keep_last_token_and_only_shrink(smol_engine, prompt):
    eng = smol_engine
    chunks, q = prompt
    ids, layout = eng.template.assemble(chunks, q)
    with pytest.raises(ValueError, match="last prompt token"):
        partial_prefill(eng.model, ids, layout, eng.prefix, [None] * 3, Plan(torch.arange(5)))

    class Growing(Plan):
        def next_positions(self, layer, positions, fresh, cached):
            return torch.arange(len(ids))

    with pytest.raises(ValueError, match="only shrink"):
        partial_prefill(eng.model, ids, layout, eng.prefix, [None] * 3, Growing(layout.question.range()))


def test_prompt_longer_than_window_is_refused(smol_engine):
    eng = smol_engine
    n = eng.model.shape.max_positions
    ids, layout = eng.template.assemble([[42] * n], [7, 8])
    with pytest.raises(ValueError, match="exceeds the model's window"):
        partial_prefill(eng.model, ids, layout, eng.prefix, [None], Plan(torch.arange(len(ids))))
