"""Partial prefill: run the model over only the positions a reuse plan selects (DESIGN section 2.6).

For every layer l the plan names the positions S_l to compute (S_0 ⊇ S_1 ⊇ ..., the last prompt token
always included). The executor keeps a request-local KV per layer (engine/workspace.py), filled from the
chunk records (keys stored before RoPE) and rotated to their positions in this prompt, overwrites it with
the fresh K/V of S_l and lets S_l attend to the merged KV (on CUDA with models/selected_attention.py, whose
cost scales with |S_l| × L). Positions not in S_l keep their cached K/V for that and
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
from chunkcache.engine.workspace import Workspace
from chunkcache.kv.record import ChunkRecord
from chunkcache.kv.stats import AttentionStats
from chunkcache.models.base import CausalLM, Placement
from chunkcache.models.rope import RotaryTables, rope_rows
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
    attended_per_layer: list[int]  # Σ_{i ∈ S_l} (i + 1): query-key pairs of causal attention (the work)
    # RoPE position of slot ``length`` (the first decoded token): ``length`` for a sequential prompt, the
    # placement's last position + 1 for a parallel one (APE), so decode continues right after the question.
    next_position: int
    stats: AttentionStats | None = None

    def rope_position(self, slot: int) -> int:
        """RoPE position of a decode slot >= ``length``."""
        return self.next_position + slot - self.length


@torch.inference_mode()
def partial_prefill(model: CausalLM, ids: torch.Tensor, layout: Layout, prefix: ChunkRecord | None,
                    records: list[ChunkRecord | None], plan: Plan, reserve: int = 0,
                    stats: AttentionStats | None = None, workspace: Workspace | None = None) -> PrefillResult:
    """Run ``plan`` over the assembled prompt ``ids`` [L] (see module docstring).

    ``prefix`` is the template prefix's record and ``records[i]`` the record used for chunk i (None: not
    cached, so the plan must compute it). ``reserve`` extra slots are allocated for decode. ``stats``
    collects Cache-Craft attention statistics of the computed chunk rows (record creation/capture only).
    The plan's ``placement`` attribute, if it has one, lays the prompt out (module docstring).
    ``workspace``: buffers an earlier pass of this request already filled from the same records (the
    question probe's), used instead of placing every record again when they fit (engine/workspace.py).
    """
    s = model.shape
    dev = model.device
    length = ids.shape[0]
    placement: Placement | None = getattr(plan, "placement", None)
    if placement is not None and placement.positions.shape[0] != length:
        raise ValueError("a placement must give one position per prompt token")
    ids = ids.to(dev)
    ws = workspace if workspace is not None and workspace.serves(prefix, records, placement, length + reserve) \
        else Workspace.build(model, length, layout, prefix, records, placement, reserve)
    rotary, place, n_pos = ws.rotary, ws.place, ws.n_pos
    # Positions live on the host too, so bookkeeping never waits for the device (one sync per layer
    # would leave the GPU idle while the host queues the next layer's kernels).
    pos_host = plan.initial.cpu()
    plan.validate(pos_host, length)
    positions = pos_host.to(dev)
    h = model.embed(ids[positions])

    def rows_layout(pos: torch.Tensor, pos_host: torch.Tensor):
        """RoPE positions and attention modification of the computed rows ``pos`` (``pos_host`` on the host)."""
        mod = None if placement is None else placement.attention(pos_host, length, dev)
        return pos if place is None else place[pos], mod

    rope_q, mod = rows_layout(positions, pos_host)
    keys, values, keys_pre = [], [], []
    computed, context_computed, attended = [], [], []
    in_context = torch.zeros(length, dtype=torch.bool)
    for span in layout.chunks:
        in_context[span.start:span.end] = True

    ws.claim(pos_host)

    def counts(pos_host: torch.Tensor) -> tuple[int, int, int]:
        """|S_l|, |S_l ∩ chunk tokens| and the query-key pairs of S_l: host work, once per position set."""
        return int(pos_host.numel()), int(in_context[pos_host].sum()), int((pos_host + 1).sum())

    count = counts(pos_host)
    kinds = [model.layer_type(i) for i in range(s.n_layers)]
    for layer in range(s.n_layers):
        k_pre, v_buf, k_rot = ws.k_pre[layer], ws.values[layer], ws.k_rot[layer]
        q, k, v = model.qkv(layer, h)
        ws.wait(layer)  # this layer's records, when they are still streaming in from host memory
        observed = plan.wants_observation(layer)
        cached = (k_pre[:, positions].clone(), v_buf[:, positions].clone()) if observed else None
        k_pre[:, positions] = k
        v_buf[:, positions] = v
        cos, sin = rotary.get(kinds[layer])
        rope_rows(k, cos, sin, rope_q, out=k_rot, rows=positions)
        q_rot = rope_rows(q, cos, sin, rope_q)
        attn = model.attend(layer, q_rot, k_rot[:, :length], v_buf[:, :length], positions, length, mod)
        if stats is not None:
            stats.observe(model, layer, q_rot, k_rot[:, :length], positions, pos_host)
        h = model.finish_layer(layer, h, attn)
        keys.append(k_rot)
        values.append(v_buf)
        keys_pre.append(k_pre)
        for out, c in zip((computed, context_computed, attended), count):
            out.append(c)
        if layer + 1 < s.n_layers:
            nxt = plan.next_positions(layer, positions, (k, v), cached)
            if nxt is not positions:
                nxt_host = nxt.cpu()
                plan.validate(nxt_host, length, within=pos_host)
                ws.check_kept(nxt_host)
                h = h[torch.searchsorted(pos_host, nxt_host).to(dev)]
                pos_host, positions = nxt_host, nxt_host.to(dev)
                count = counts(pos_host)
                rope_q, mod = rows_layout(positions, pos_host)

    logits = model.head(h[-1:])[0]
    return PrefillResult(logits, keys, values, keys_pre, length, rotary, computed, context_computed, attended,
                         n_pos, stats)
