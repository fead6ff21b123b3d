"""The compute floor's accounting (bench/floor.py) on a real model and real prefills."""

from __future__ import annotations

import pytest
import torch

from chunkcache.bench.floor import Peaks, floor_ms, prefill_work
from chunkcache.engine.executor import partial_prefill
from chunkcache.engine.prompt import Layout, Span
from chunkcache.strategies.base import Plan


def test_work_of_a_full_and_a_one_token_prefill(smol):
    model, _ = smol
    s = model.shape
    length = 40
    ids = torch.randint(0, 1000, (length,))
    layout = Layout(Span(0, 0), [], Span(0, length))
    full = partial_prefill(model, ids, layout, None, [], Plan(torch.arange(length)))
    last = partial_prefill(model, ids, layout, None, [], Plan(torch.tensor([length - 1])))
    assert full.attended_per_layer == [length * (length + 1) // 2] * s.n_layers  # causal pairs
    assert last.attended_per_layer == [length] * s.n_layers and last.computed_per_layer == [1] * s.n_layers

    layer_params = sum(p.numel() for p in model.layers[0].parameters())
    head = model.hf.lm_head.weight.numel()
    flops, nbytes = prefill_work(model, [last], reused_tokens=length - 1)
    expected = 2.0 * layer_params * s.n_layers + 4.0 * s.n_heads * s.head_dim * length * s.n_layers + 2.0 * head
    assert flops == pytest.approx(expected)
    kv = 2 * s.n_layers * s.n_kv_heads * s.head_dim * model.dtype.itemsize * (length - 1)
    assert nbytes == (s.n_layers * layer_params + head) * model.dtype.itemsize + kv
    # two passes (a probe, then the plan) read the weights twice
    _, twice = prefill_work(model, [last, last], reused_tokens=length - 1)
    assert twice - nbytes == (s.n_layers * layer_params + head) * model.dtype.itemsize
    full_flops, _ = prefill_work(model, [full], reused_tokens=0)
    assert full_flops > 30 * flops
    peaks = Peaks(flops=1e12, bandwidth=1e11)
    assert floor_ms(flops, nbytes, peaks) == pytest.approx(1e3 * max(flops / 1e12, nbytes / 1e11))
