"""The paged KV pool's bookkeeping: a reserved block (the decode graphs' padding rows, engine/runner.py) is
never handed to a request, and admission counts only the blocks requests may hold."""

from __future__ import annotations

import pytest
import torch

from chunkcache.engine.kv_blocks import KVBlocks
from chunkcache.engine.scheduler import Scheduler
from chunkcache.engine.sequence import GenParams, Sequence
from chunkcache.models.base import ModelShape

SHAPE = ModelShape(n_layers=2, n_heads=2, n_kv_heads=1, head_dim=8, hidden=16, max_positions=256)


def _seq(tokens: int, max_tokens: int) -> Sequence:
    return Sequence(list(range(tokens)), tokens, GenParams(max_tokens=max_tokens), None, set())


def test_a_reserved_block_is_never_allocated_and_shrinks_what_a_request_may_need():
    blocks = KVBlocks(SHAPE, 4, 16, torch.device("cpu"), torch.float32)
    sched = Scheduler(blocks, max_running=4, max_waiting=4, max_prefill_tokens=1024)
    whole = _seq(48, 16)  # 64 tokens: all four blocks
    assert sched.fits(whole)
    sink = blocks.reserve()
    assert blocks.capacity == 3 and blocks.free_blocks == 3
    assert not sched.fits(whole) and sched.fits(_seq(32, 16))
    taken = blocks.allocate(3)
    assert sink not in taken and blocks.allocate(1) is None
    blocks.release(taken)
    assert blocks.free_blocks == 3 and sink not in blocks.allocate(3)
    with pytest.raises(ValueError, match="no free KV block"):
        blocks.reserve()
