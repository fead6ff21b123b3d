"""engine.decode.teacher_force: the logits the answer-token fidelity metrics compare."""

from __future__ import annotations

import pytest
import torch

from chunkcache.engine.decode import teacher_force
from chunkcache.strategies import make_strategy

CHUNKS = ["Title: Ada\nAda Lovelace wrote the first program for the Analytical Engine.\n\n",
          "Title: Alan\nAlan Turing described a universal machine in 1936.\n\n"]


def _prefill(eng, strategy: str, reserve: int):
    chunks = [eng.encode_chunk(c)[1] for c in CHUNKS]
    for ids in chunks:
        if not eng.store.variants(eng.chunk_id(ids)):
            eng.precompute(ids)
    return eng.prefill(chunks, eng.template.encode_question("Who described a universal machine?"),
                       make_strategy(strategy), reserve=reserve)


def test_forcing_the_greedy_answer_replays_free_running_decode(smol_engine):
    eng, steps = smol_engine, 6
    pre = _prefill(eng, "full", steps)
    greedy = list(eng.generate(pre, steps))
    assert len(greedy) >= 3
    length, keys = pre.result.length, pre.result.keys[3][:, :pre.result.length].clone()
    forced = teacher_force(eng.model, pre.result, greedy)
    assert forced.shape == (len(greedy), eng.model.config.vocab_size)
    assert torch.equal(forced[0], pre.result.logits.float())  # step 0: the prefill's own logits
    assert forced.argmax(-1).tolist() == greedy  # later steps: the logits free-running decode picked from
    # ... and they equal a plain forward pass over the prompt followed by the forced tokens
    with torch.inference_mode():
        ids = torch.cat([pre.ids, torch.tensor(greedy[:-1])])
        ref = eng.model.hf(ids[None]).logits[0, length - 1:].float()
    torch.testing.assert_close(forced, ref, atol=2e-3, rtol=1e-3)
    # the prompt's KV and length are untouched, so forcing again gives the same logits
    assert pre.result.length == length and torch.equal(pre.result.keys[3][:, :length], keys)
    torch.testing.assert_close(teacher_force(eng.model, pre.result, greedy), forced, atol=0, rtol=0)


def test_forcing_into_a_reused_prefill_and_limits(smol_engine):
    eng = smol_engine
    full = _prefill(eng, "full", 4)
    answer = list(eng.generate(full, 4))
    naive = _prefill(eng, "naive", 4)
    forced = teacher_force(eng.model, naive.result, answer)
    assert torch.equal(forced[0], naive.result.logits.float())
    assert teacher_force(eng.model, naive.result, []).shape == (0, eng.model.config.vocab_size)
    with pytest.raises(ValueError, match="reserved too few"):
        teacher_force(eng.model, naive.result, [1] * 6)
