"""Both ways a chunk record is made — isolated precompute and capture from a served request — and the
bad inputs they refuse."""

from __future__ import annotations

import pytest
import torch

from chunkcache.kv.build import isolated_record
from chunkcache.kv.record import ChunkRecord, chunk_hash
from chunkcache.strategies import make_strategy

TEXTS = [
    "Title: Otters\nSea otters hold hands while they sleep so that they do not drift apart.\n\n",
    "Title: Rivers\nThe Amazon carries more water than the next seven largest rivers combined.\n\n",
    "Title: Moons\nGanymede, a moon of Jupiter, is larger than the planet Mercury.\n\n",
]


def test_isolated_record_shape_and_statistics(smol_engine):
    eng = smol_engine
    cid, ids = eng.encode_chunk(TEXTS[0])
    rec = eng.precompute(ids, cid)
    s = eng.model.shape
    assert rec.prefix_ids == [] and rec.variant == "isolated" and rec.exact
    assert rec.chunk_id == chunk_hash(eng.fingerprint, ids)
    assert len(rec.keys) == s.n_layers and rec.keys[0].shape == (s.n_kv_heads, len(ids), s.head_dim)
    assert rec.inter.shape == (s.n_layers, 1) and rec.intra.shape == (s.n_layers,)
    assert rec.outside.shape == (len(ids),) and bool((rec.outside >= 0).all() and (rec.outside <= 1).all())
    # every row's attention mass to the template (sink excluded) plus inside the chunk is at most 1
    assert bool(((rec.inter[:, 0] * (len(eng.template.prefix_ids) - 1) + rec.intra) <= len(ids) + 1e-3).all())


def test_capture_from_a_full_request_gives_in_context_variants(smol_engine):
    eng = smol_engine
    chunks = [eng.encode_chunk(t)[1] for t in TEXTS]
    q = eng.template.encode_question("Which moon is larger than Mercury?")
    pre = eng.prefill(chunks, q, make_strategy("full"), capture_variants=True)
    ids = [eng.chunk_id(c) for c in chunks]
    variants = {cid: eng.store.variants(cid) for cid in ids}
    assert len(variants[ids[2]]) >= 1
    got = [r for r in (eng.store.get(ids[2], v) for v in variants[ids[2]]) if r.prefix_ids == ids[:2]]
    assert len(got) == 1
    var = got[0]
    assert var.exact  # every chunk was computed at every layer
    span = pre.layout.chunks[2]
    for layer in (0, eng.model.shape.n_layers - 1):
        want = pre.result.keys_pre[layer][:, span.start:span.end]
        assert torch.allclose(var.keys[layer].float(), want, atol=0, rtol=0)
    # the variant knows how much it attended to each preceding chunk
    assert var.inter.shape == (eng.model.shape.n_layers, 3) and bool((var.inter[:, 1:] > 0).all())
    # and a later request with the same prefix finds it exact: cachecraft recomputes none of chunk 2
    craft = make_strategy("cachecraft:alpha=1.0")
    again = eng.prefill(chunks, q, craft)
    assert again.decision.plan.cfo[2] == 0.0 and again.decision.records[2].prefix_ids == ids[:2]


def test_capture_from_a_partial_request(smol_engine):
    """Chunks missing from the store are computed in full and their in-context records stored."""
    eng = smol_engine
    texts = [t.replace("Title:", "Topic:") for t in TEXTS]
    chunks = [eng.encode_chunk(t)[1] for t in texts]
    eng.precompute(chunks[0])
    q = eng.template.encode_question("What do otters do?")
    first = eng.prefill(chunks, q, make_strategy("naive"))
    assert first.stats.chunks_missed == 2
    second = eng.prefill(chunks, q, make_strategy("naive"))
    assert second.stats.chunks_missed == 0 and second.stats.recompute_fraction == 0.0
    # the captured records reproduce the first request exactly (they are its own states)
    assert torch.max(torch.abs(first.result.logits - second.result.logits)).item() < 1e-4


def test_variant_captured_over_stale_states_is_not_exact(smol_engine):
    """Issue #10: a missed chunk computed in full after a reused (stale) chunk is keyed by its predecessors
    but was computed over stale states; later requests must not reuse it as exact."""
    eng = smol_engine
    texts = [t.replace("Title:", "Note:") for t in TEXTS]
    chunks = [eng.encode_chunk(t)[1] for t in texts]
    ids = [eng.chunk_id(c) for c in chunks]
    eng.precompute(chunks[0])
    eng.precompute(chunks[1])
    q = eng.template.encode_question("Which river carries the most water?")
    first = eng.prefill(chunks, q, make_strategy("naive"))  # chunk 1 reused as isolated: stale after chunk 0
    assert first.stats.chunks_missed == 1
    [var] = [eng.store.get(ids[2], v) for v in eng.store.variants(ids[2])]
    assert var.prefix_ids == ids[:2] and not var.exact
    # `prefix` reuses chunk 0 only; cachecraft repairs chunk 2 although its variant has the right prefix
    pre = eng.prefill(chunks, q, make_strategy("prefix"))
    assert pre.decision.plan.initial[0].item() == pre.layout.chunks[1].start
    craft = make_strategy("cachecraft:alpha=1.0")
    cfo = eng.prefill(chunks, q, craft).decision.plan.cfo
    assert cfo[0] == 0.0 and cfo[2] > 0.0


def test_empty_chunk_is_refused(smol_engine):
    eng = smol_engine
    with pytest.raises(ValueError, match="empty chunk"):
        eng.encode_chunk("")
    with pytest.raises(ValueError, match="empty chunk"):
        isolated_record(eng.model, eng.template, eng.prefix, [], "x")
    with pytest.raises(ValueError, match="no tokens"):
        eng.template.assemble([[1, 2], []], [3])
    with pytest.raises(ValueError):
        ChunkRecord("x", [], [], [], "fp")


def test_chunk_longer_than_window_is_refused(smol_engine):
    eng = smol_engine
    too_long = [42] * eng.model.shape.max_positions
    with pytest.raises(ValueError, match="does not fit the model's window"):
        isolated_record(eng.model, eng.template, eng.prefix, too_long, "x")
