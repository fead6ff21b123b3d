"""Partial prefill: run the model over only the positions a reuse plan selects (DESIGN section 2.6).

For every layer l the plan names the positions S_l to compute (S_0 ⊇ S_1 ⊇ ..., the last prompt token
always included). The executor keeps a request-local KV per layer, filled from the chunk records (keys
stored before RoPE) and overwritten with the fresh K/V of S_l, then rotates all keys to their positions in
this prompt and lets S_l attend to the merged KV. Positions not in S_l keep their cached K/V for that and
all later layers. Shared records are never written: the buffers are copies.

Identities this must satisfy (tests/engine/test_executor.py): S_l = all positions equals a full prefill;
a chunk placed alone after the template prefix reuses keys equal to a fresh computation there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from chunkcache.engine.prompt import Layout
from chunkcache.kv.record import ChunkRecord
from chunkcache.kv.stats import AttentionStats
from chunkcache.models.base import CausalLM
from chunkcache.models.rope import RotaryTables, apply_rope
from chunkcache.strategies.base import Plan


@dataclass
class PrefillResult:
    """What a prefill leaves for decode and for capture."""

    logits: torch.Tensor  # [vocab] float32, next-token logits after the last prompt token
    keys: list[torch.Tensor]  # per layer [Hkv, capacity, D], rotated, valid up to `length`
    values: list[torch.Tensor]
    keys_pre: list[torch.Tensor]  # per layer [Hkv, length, D] before RoPE (for capturing variants)
    length: int
    rotary: RotaryTables
    computed_per_layer: list[int]  # |S_l|
    context_computed_per_layer: list[int]  # |S_l ∩ chunk tokens|
    stats: AttentionStats | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _fill(buf: torch.Tensor, layout: Layout, prefix: ChunkRecord | None, records: list[ChunkRecord | None],
          layer: int, which: str) -> None:
    """Copy cached K or V of ``layer`` into the request buffer at each part's span."""
    parts = [(layout.prefix, prefix)] + list(zip(layout.chunks, records))
    for span, rec in parts:
        if rec is not None:
            src = (rec.keys if which == "k" else rec.values)[layer]
            buf[:, span.start:span.end] = src.to(device=buf.device, dtype=buf.dtype, non_blocking=True)


@torch.inference_mode()
def partial_prefill(model: CausalLM, ids: torch.Tensor, layout: Layout, prefix: ChunkRecord | None,
                    records: list[ChunkRecord | None], plan: Plan, reserve: int = 0,
                    stats: AttentionStats | None = None) -> PrefillResult:
    """Run ``plan`` over the assembled prompt ``ids`` [L] (see module docstring).

    ``prefix`` is the template prefix's record and ``records[i]`` the record used for chunk i (None: not
    cached, so the plan must compute it). ``reserve`` extra slots are allocated for decode. ``stats``
    collects Cache-Craft attention statistics of the computed chunk rows (record creation/capture only).
    """
    s = model.shape
    dev, dt = model.device, model.dtype
    length = ids.shape[0]
    if length > s.max_positions:
        raise ValueError(f"prompt of {length} tokens exceeds the model's window of {s.max_positions}")
    ids = ids.to(dev)
    rotary = model.rotary(length + reserve)
    positions = plan.initial.to(dev)
    plan.validate(positions, length)
    h = model.embed(ids[positions])
    keys, values, keys_pre = [], [], []
    computed, context_computed = [], []
    in_context = torch.zeros(length, dtype=torch.bool, device=dev)
    for span in layout.chunks:
        in_context[span.start:span.end] = True

    for layer in range(s.n_layers):
        k_pre = torch.zeros(s.n_kv_heads, length, s.head_dim, device=dev, dtype=dt)
        v_buf = torch.zeros(s.n_kv_heads, length + reserve, s.head_dim, device=dev, dtype=dt)
        _fill(k_pre, layout, prefix, records, layer, "k")
        _fill(v_buf, layout, prefix, records, layer, "v")
        q, k, v = model.qkv(layer, h)
        observed = plan.wants_observation(layer)
        cached = (k_pre[:, positions].clone(), v_buf[:, positions].clone()) if observed else None
        k_pre[:, positions] = k
        v_buf[:, positions] = v
        cos, sin = rotary.get(model.layer_type(layer))
        k_rot = torch.empty(s.n_kv_heads, length + reserve, s.head_dim, device=dev, dtype=dt)
        k_rot[:, :length] = apply_rope(k_pre, cos[:length], sin[:length])
        q_rot = apply_rope(q, cos[positions], sin[positions])
        attn = model.attend(layer, q_rot, k_rot[:, :length], v_buf[:, :length], positions, length)
        if stats is not None:
            stats.observe(model, layer, q_rot, k_rot[:, :length], positions)
        h = model.finish_layer(layer, h, attn)
        keys.append(k_rot)
        values.append(v_buf)
        keys_pre.append(k_pre)
        computed.append(int(positions.numel()))
        context_computed.append(int(in_context[positions].sum()))
        if layer + 1 < s.n_layers:
            nxt = plan.next_positions(layer, positions, (k, v), cached)
            if nxt is not positions:
                nxt = nxt.to(dev)
                plan.validate(nxt, length, within=positions)
                keep = torch.searchsorted(positions, nxt)
                h = h[keep]
                positions = nxt

    logits = model.head(h[-1:])[0]
    return PrefillResult(logits, keys, values, keys_pre, length, rotary, computed, context_computed, stats)
