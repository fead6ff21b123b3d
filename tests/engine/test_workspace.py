"""The request workspace (engine/workspace.py): records placed once, shared by the probe and the plan."""

from __future__ import annotations

import pytest
import torch

from chunkcache.engine import reuse
from chunkcache.engine.executor import partial_prefill
from chunkcache.engine.workspace import Workspace
from chunkcache.kv.record import stacked
from chunkcache.strategies import make_strategy
from chunkcache.strategies.base import Plan

TEXTS = ["Title: Alpha\nThe alpha key opens the north gate of the old town.\n\n",
         "Title: Beta\nThe beta key was lost in the river last spring, near the mill.\n\n",
         "Title: Gamma\nNobody remembers what the gamma key opens, or who made it.\n\n"]


def _request(eng):
    chunks = [eng.tokenizer(t, add_special_tokens=False).input_ids for t in TEXTS]
    question = eng.tokenizer("Question: What does the alpha key open?\nAnswer:", add_special_tokens=False).input_ids
    for c in chunks:
        eng.precompute(c)
    ids, layout = eng.template.assemble(chunks, question, [eng.chunk_id(c) for c in chunks])
    return ids, layout, eng.candidates(layout.chunk_ids)


def test_focus_places_records_once_and_matches_a_fresh_workspace(smol_engine, monkeypatch):
    eng = smol_engine
    ids, layout, cands = _request(eng)
    built = []
    original = Workspace.build.__func__

    def counting(cls, *args, **kwargs):
        built.append(args[4])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Workspace, "build", classmethod(counting))
    strategy = make_strategy("focus:ratio=0.3")
    _, decision, shared, probe = reuse.decide_and_prefill(eng.model, ids, layout, eng.prefix, cands, strategy, 4)
    assert probe is not None and len(built) == 1  # the plan's prefill reused the probe's workspace
    fresh = partial_prefill(eng.model, ids, layout, eng.prefix, decision.records, decision.plan, reserve=4)
    assert len(built) == 2
    assert torch.equal(shared.logits, fresh.logits)
    for a, b in zip(shared.values, fresh.values):
        assert torch.equal(a[:, :layout.length], b[:, :layout.length])
    assert shared.keys[0].shape[1] == layout.length + 4  # the decode reserve survives sharing


def test_a_pass_must_recompute_what_an_earlier_pass_wrote(smol_engine):
    eng = smol_engine
    ids, layout, cands = _request(eng)
    records = [c[0] for c in cands]
    ws = Workspace.build(eng.model, layout.length, layout, eng.prefix, records, None, 0)
    partial_prefill(eng.model, ids, layout, eng.prefix, records, Plan(layout.question.range()), workspace=ws)
    only_last = Plan(torch.tensor([layout.length - 1]))
    with pytest.raises(ValueError, match="recompute every position"):
        partial_prefill(eng.model, ids, layout, eng.prefix, records, only_last, workspace=ws)
    # other records or a smaller decode reserve than asked for: a fresh workspace, not this one
    assert not ws.serves(eng.prefix, [None, *records[1:]], None, layout.length)
    assert not ws.serves(eng.prefix, records, None, layout.length + 1)
    assert ws.serves(eng.prefix, records, None, layout.length)


def test_stacked_is_a_view_only_for_evenly_spaced_layers():
    block = torch.randn(4, 2, 5, 3)
    views = list(block.unbind(0))
    assert stacked(views).data_ptr() == block.data_ptr() and torch.equal(stacked(views), block)
    loose = [torch.randn(2, 5, 3) for _ in range(4)]
    assert torch.equal(stacked(loose), torch.stack(loose))
    shuffled = [views[1], views[0], views[2], views[3]]
    assert torch.equal(stacked(shuffled), torch.stack(shuffled))  # same buffer, wrong order: a real stack


def test_a_record_remembers_its_block_only_when_it_is_a_view():
    from chunkcache.kv.record import ChunkRecord

    buf = torch.randn(4, 2, 5, 3)
    rec = ChunkRecord("c", list(range(5)), list(buf.unbind(0)), [torch.randn(2, 5, 3) for _ in range(4)], "fp")
    assert rec.block("k") is rec.block("k") and rec.block("k").data_ptr() == buf.data_ptr()
    assert rec.block("v") is not rec.block("v")  # a stacked copy is made per call, never kept beside the record
    assert torch.equal(rec.block("v"), torch.stack(rec.values))
    moved = rec.to("cpu", torch.float64)
    assert moved.block("v") is moved.block("v") and torch.equal(moved.block("v"), torch.stack(rec.values).double())
    rec.keys = [k.clone() for k in rec.keys]  # a new list: the remembered view no longer applies
    assert rec.block("k").data_ptr() != buf.data_ptr() and torch.equal(rec.block("k"), buf)
