"""The partial-prefill executor's identities (issue: Chunk-cache core, item 3) on the packaged model."""

from __future__ import annotations

import pytest
import torch

from chunkcache.engine.decode import generate
from chunkcache.engine.executor import partial_prefill
from chunkcache.kv.build import isolated_record
from chunkcache.strategies import make_strategy
from chunkcache.strategies.base import Plan

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


def test_plan_all_positions_equals_full(smol_engine, prompt):
    """Computing every position over cached records gives exactly the full prefill (< 1e-4)."""
    eng = smol_engine
    chunks, q = prompt
    full = eng.prefill(chunks, q, make_strategy("full"))
    ids, layout = full.ids, full.layout
    records = [eng.candidates([cid])[0][0] for cid in layout.chunk_ids]
    everything = partial_prefill(eng.model, ids, layout, eng.prefix, records, Plan(torch.arange(len(ids))))
    assert torch.max(torch.abs(everything.logits - full.result.logits)).item() < 1e-4


def test_full_matches_transformers(smol_engine, prompt):
    eng = smol_engine
    chunks, q = prompt
    pre = eng.prefill(chunks, q, make_strategy("full"))
    with torch.inference_mode():
        ref = eng.model.hf(pre.ids[None]).logits[0, -1].float()
    assert torch.max(torch.abs(pre.result.logits - ref)).item() < 1e-3


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, None)])
def test_single_chunk_reuse_equals_fresh(smol_engine, prompt, dtype, tol):
    """One chunk at offset p after the template prefix: reused keys equal a fresh computation at p."""
    eng = smol_engine
    chunks, q = prompt
    chunk = chunks[1]
    rec = isolated_record(eng.model, eng.template, eng.prefix, chunk, eng.chunk_id(chunk), dtype)
    ids, layout = eng.template.assemble([chunk], q, [rec.chunk_id])
    fresh = partial_prefill(eng.model, ids, layout, None, [None], Plan(torch.arange(len(ids))))
    reused = partial_prefill(eng.model, ids, layout, eng.prefix, [rec.to("cpu", torch.float32)],
                             Plan(layout.question.range()))
    span = layout.chunks[0]
    for layer, (a, b) in enumerate(zip(fresh.keys, reused.keys)):
        a, b = a[:, span.start:span.end], b[:, span.start:span.end]
        if tol is not None:
            assert torch.max(torch.abs(a - b)).item() < tol, layer
        else:
            # bf16 storage: within bf16 rounding of the pre-RoPE key (rotation preserves norms per pair)
            bound = a.abs().amax() * 2 ** -8 * 2
            assert torch.max(torch.abs(a - b)).item() <= bound.item(), layer
    if dtype is torch.float32:
        assert torch.max(torch.abs(fresh.logits - reused.logits)).item() < 1e-4


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
