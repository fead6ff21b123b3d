"""One batched decode step for every running request over the paged KV (kv_blocks.py).

The B pending tokens (one per request) go through each layer as one [B, hidden] batch: the projections
and the MLP are one matrix product for all requests. On CUDA, attention reads each request's blocks in place
through its block table (models/paged_attention.py); elsewhere it is one SDPA call over the requests'
gathered blocks, each row masked to its own length (and the layer's sliding window). Each request's new
K/V land in its next slot, keys rotated to the request's own RoPE position (a parallel placement such as
APE's continues decode after its question, not after its last slot). Sampling happens on the device and
the host reads the B next tokens back once per step.

Greedy output does not depend on the batch: every row's arithmetic is the same whatever the other rows
(masked padding contributes exact zeros), which tests/engine/test_serving.py checks token for token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from chunkcache.engine.decode import Sampling, pick
from chunkcache.engine.kv_blocks import KVBlocks
from chunkcache.engine.sequence import Sequence
from chunkcache.models.base import CausalLM
from chunkcache.models import paged_attention
from chunkcache.models.rope import RotaryTables, rope_rows


class DecodeRunner:
    """Runs decode steps of ``model`` over ``blocks`` (see module docstring)."""

    def __init__(self, model: CausalLM, blocks: KVBlocks) -> None:
        self.model = model
        self.blocks = blocks
        self.rotary: RotaryTables = model.rotary(model.shape.max_positions)

    @torch.inference_mode()
    def step(self, seqs: list[Sequence]) -> list[int]:
        """Feed each request's pending token, store its K/V, return each request's next token."""
        model, s, dev = self.model, self.model.shape, self.model.device
        width = max(len(q.blocks) for q in seqs)
        tables = torch.tensor([q.blocks + [q.blocks[0]] * (width - len(q.blocks)) for q in seqs], device=dev)
        slot = torch.tensor([q.kv_len for q in seqs], device=dev)
        rope = torch.tensor([q.rope_position(q.kv_len) for q in seqs], device=dev)
        where = self.blocks.slots(tables, slot)
        paged = paged_attention.available(dev, s.head_dim)  # the blocks read in place (models/paged_attention.py)
        if paged:  # the kernel's int32 tables and lengths, once a step
            tables32, lengths = tables.to(torch.int32), (slot + 1).to(torch.int32)
        masks: dict[int | None, torch.Tensor] = {}
        h = model.embed(torch.tensor([q.pending for q in seqs], device=dev))
        for layer in range(s.n_layers):
            q, k, v = model.qkv(layer, h)  # q [H, B, D], k/v [Hkv, B, D]
            cos, sin = self.rotary.get(model.layer_type(layer))
            q = rope_rows(q, cos, sin, rope)  # one RoPE position per request
            k = rope_rows(k, cos, sin, rope)
            self.blocks.write_token(layer, where, k.transpose(0, 1), v.transpose(0, 1))
            window = model.windows[layer]
            if paged:
                attn = paged_attention.paged_decode_attention(q.transpose(0, 1), self.blocks.k[layer],
                                                              self.blocks.v[layer], tables32, lengths,
                                                              model.scaling, window)
            else:
                if window not in masks:
                    masks[window] = self._mask(slot, width * self.blocks.block_size, window)
                attn = self._attend(q, *self.blocks.gather(layer, tables), masks[window])
            h = model.finish_layer(layer, h, attn)
        logits = model.head(h)
        return self._sample(seqs, logits)

    @staticmethod
    def _mask(slot: torch.Tensor, n_keys: int, window: int | None) -> torch.Tensor:
        """[B, 1, 1, n_keys]: request b sees its slots 0..slot[b] (within the layer's window)."""
        k_idx = torch.arange(n_keys, device=slot.device)
        visible = k_idx[None, :] <= slot[:, None]
        if window is not None:
            visible &= slot[:, None] - k_idx[None, :] < window
        return visible[:, None, None, :]

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q [H, B, D] over keys/values [B, Hkv, n, D] under mask [B, 1, 1, n] → [B, H·D].

        GQA without copying K/V: the G query heads that share a KV head become G query rows of that head
        (q viewed as [B, Hkv, G, D]), which every SDPA kernel handles, CUDA's masked one included."""
        s = self.model.shape
        b = q.shape[1]
        grouped = q.transpose(0, 1).reshape(b, s.n_kv_heads, s.n_heads // s.n_kv_heads, s.head_dim)
        out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=self.model.scaling)
        return out.reshape(b, -1)

    @staticmethod
    def _sample(seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
        """Greedy rows by one argmax over the batch (one device→host read); sampled rows with their own
        seeded generator."""
        tokens = logits.argmax(dim=-1).tolist()
        for i, q in enumerate(seqs):
            if q.params.temperature > 0:
                tokens[i] = pick(logits[i], Sampling(q.params.temperature, q.params.top_p), q.generator)
        return tokens
