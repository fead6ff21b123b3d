"""Partial prefill: run the model over only the positions a reuse plan selects (DESIGN section 2.6).

For every layer l the plan names the positions S_l to compute (S_0 ⊇ S_1 ⊇ ..., the last prompt token
always included). The executor keeps a request-local KV per layer, filled from the chunk records (keys
stored before RoPE) and overwritten with the fresh K/V of S_l, then rotates all keys to their positions in
this prompt and lets S_l attend to the merged KV. Positions not in S_l keep their cached K/V for that and
all later layers. Shared records are never written: the buffers are copies.

Identities this must satisfy (tests/engine/test_executor.py): S_l = all positions equals a full prefill
(and transformers); a record placed at a new offset gives layer-0 K/V equal to a fresh prefill there;
``prefix`` over exact variants and ``cacheblend:ratio=1`` equal ``full``.

A plan may carry a ``placement`` (models/base.py ``Placement``): per-token RoPE positions instead of
0..L-1, an attention graph over segments, and APE's tempered attention to context keys. Without one the
executor runs exactly the plain causal path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chunkcache.engine.prompt import Layout
from chunkcache.kv.record import ChunkRecord
from chunkcache.kv.stats import AttentionStats
from chunkcache.models.base import CausalLM, Placement
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
    # RoPE position of slot ``length`` (the first decoded token): ``length`` for a sequential prompt, the
    # placement's last position + 1 for a parallel one (APE), so decode continues right after the question.
    next_position: int
    stats: AttentionStats | None = None

    def rope_position(self, slot: int) -> int:
        """RoPE position of a decode slot >= ``length``."""
        return self.next_position + slot - self.length


def _fill(buf: torch.Tensor, layout: Layout, prefix: ChunkRecord | None, records: list[ChunkRecord | None],
          which: str) -> None:
    """Copy every layer's cached K or V of each part into the request buffer [layers, Hkv, L, D] at its span:
    one stacked copy per part rather than one per part and layer (the launch count dominates short plans)."""
    parts = [(layout.prefix, prefix)] + list(zip(layout.chunks, records))
    for span, rec in parts:
        if rec is None:
            continue
        layers = rec.keys if which == "k" else rec.values
        dst = buf[:, :, span.start:span.end]
        if layers[0].device == buf.device:
            dst.copy_(torch.stack(layers))
        else:  # host tier: layer by layer straight from (pinned) host memory, asynchronously
            for layer, src in enumerate(layers):
                dst[layer].copy_(src, non_blocking=True)


@torch.inference_mode()
def partial_prefill(model: CausalLM, ids: torch.Tensor, layout: Layout, prefix: ChunkRecord | None,
                    records: list[ChunkRecord | None], plan: Plan, reserve: int = 0,
                    stats: AttentionStats | None = None) -> PrefillResult:
    """Run ``plan`` over the assembled prompt ``ids`` [L] (see module docstring).

    ``prefix`` is the template prefix's record and ``records[i]`` the record used for chunk i (None: not
    cached, so the plan must compute it). ``reserve`` extra slots are allocated for decode. ``stats``
    collects Cache-Craft attention statistics of the computed chunk rows (record creation/capture only).
    The plan's ``placement`` attribute, if it has one, lays the prompt out (module docstring).
    """
    s = model.shape
    dev, dt = model.device, model.dtype
    length = ids.shape[0]
    placement: Placement | None = getattr(plan, "placement", None)
    if placement is not None and placement.positions.shape[0] != length:
        raise ValueError("a placement must give one position per prompt token")
    n_pos = length if placement is None else int(placement.positions.max()) + 1
    if n_pos > s.max_positions:
        raise ValueError(f"prompt of {n_pos} positions exceeds the model's window of {s.max_positions}")
    ids = ids.to(dev)
    rotary = model.rotary(max(length, n_pos) + reserve)
    place = None if placement is None else placement.positions.to(dev)  # RoPE position of every token
    # Positions live on the host too, so bookkeeping never waits for the device (one sync per layer
    # would leave the GPU idle while the host queues the next layer's kernels).
    pos_host = plan.initial.cpu()
    plan.validate(pos_host, length)
    positions = pos_host.to(dev)
    h = model.embed(ids[positions])

    def rows_layout(pos: torch.Tensor):
        """RoPE positions and attention modification of the computed rows ``pos``."""
        if placement is None:
            return pos, None
        return place[pos], placement.attention(pos, length)

    rope_q, mod = rows_layout(positions)
    keys, values, keys_pre = [], [], []
    computed, context_computed = [], []
    in_context = torch.zeros(length, dtype=torch.bool)
    for span in layout.chunks:
        in_context[span.start:span.end] = True

    k_pre_all = torch.zeros(s.n_layers, s.n_kv_heads, length, s.head_dim, device=dev, dtype=dt)
    v_all = torch.zeros(s.n_layers, s.n_kv_heads, length + reserve, s.head_dim, device=dev, dtype=dt)
    k_rot_all = torch.empty_like(v_all)
    _fill(k_pre_all, layout, prefix, records, "k")
    _fill(v_all, layout, prefix, records, "v")
    # Place every cached key at its position in this prompt: one rotation per layer type for all layers.
    kinds = [model.layer_type(i) for i in range(s.n_layers)]
    for kind in dict.fromkeys(kinds):
        cos, sin = rotary.get(kind)
        idx = [i for i, t in enumerate(kinds) if t == kind]
        sel = slice(idx[0], idx[-1] + 1) if idx == list(range(idx[0], idx[-1] + 1)) else idx
        where = slice(0, length) if place is None else place
        k_rot_all[sel, :, :length] = apply_rope(k_pre_all[sel], cos[where], sin[where])
    for layer in range(s.n_layers):
        k_pre, v_buf, k_rot = k_pre_all[layer], v_all[layer], k_rot_all[layer]
        q, k, v = model.qkv(layer, h)
        observed = plan.wants_observation(layer)
        cached = (k_pre[:, positions].clone(), v_buf[:, positions].clone()) if observed else None
        k_pre[:, positions] = k
        v_buf[:, positions] = v
        cos, sin = rotary.get(kinds[layer])
        cos_q, sin_q = cos[rope_q], sin[rope_q]
        k_rot[:, positions] = apply_rope(k, cos_q, sin_q)
        q_rot = apply_rope(q, cos_q, sin_q)
        attn = model.attend(layer, q_rot, k_rot[:, :length], v_buf[:, :length], positions, length, mod)
        if stats is not None:
            stats.observe(model, layer, q_rot, k_rot[:, :length], positions)
        h = model.finish_layer(layer, h, attn)
        keys.append(k_rot)
        values.append(v_buf)
        keys_pre.append(k_pre)
        computed.append(int(pos_host.numel()))
        context_computed.append(int(in_context[pos_host].sum()))
        if layer + 1 < s.n_layers:
            nxt = plan.next_positions(layer, positions, (k, v), cached)
            if nxt is not positions:
                nxt_host = nxt.cpu()
                plan.validate(nxt_host, length, within=pos_host)
                h = h[torch.searchsorted(pos_host, nxt_host).to(dev)]
                pos_host, positions = nxt_host, nxt_host.to(dev)
                rope_q, mod = rows_layout(positions)

    logits = model.head(h[-1:])[0]
    return PrefillResult(logits, keys, values, keys_pre, length, rotary, computed, context_computed, n_pos,
                         stats)
