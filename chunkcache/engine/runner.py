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

With ``graphs`` on CUDA the step is replayed from a CUDA graph (``torch.cuda.CUDAGraph``), one per batch size bucket
(GRAPH_BATCHES), captured the first time a step needs it: a decode step issues about 15 kernels a layer for
a few rows each, and for `naive`'s question-only prefill, work of the same shape, the H100 profile found the
host issuing kernels slower than the GPU ran them (docs/benchmarks.md, issue 6). A graph
reads its inputs from fixed device buffers, so a step writes the requests' tokens, positions, slots and
block tables there (two copies) and replays. A batch is padded up to its bucket with rows that write to and
read from one reserved block only (``sink``), so they touch no request's K/V. Graphs need the paged
kernel (a fixed grid over the requests' block tables, each loop bounded by the row's own length); other
devices and batches above the largest bucket run the same layers eagerly. Not yet run on a GPU (no device
was lent when it was written), so the serving engine keeps it off by default (``ServingConfig.cuda_graphs``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from chunkcache.engine.decode import Sampling, pick
from chunkcache.engine.kv_blocks import KVBlocks
from chunkcache.engine.sequence import Sequence
from chunkcache.models.base import CausalLM
from chunkcache.models import paged_attention
from chunkcache.models.rope import RotaryTables, rope_rows


log = logging.getLogger(__name__)

# Batch sizes a decode graph is captured for; a batch runs in the smallest bucket that holds it.
GRAPH_BATCHES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


@dataclass
class _Graph:
    """One captured decode step for ``size`` rows and the fixed buffers it reads and writes: ``rows``
    [4, size] (token, RoPE position, block and offset of the new K/V), ``paged`` int32 [size + size·width]
    (keys each row sees, then the block tables row by row), ``logits`` [size, vocab]."""

    size: int
    rows: torch.Tensor
    paged: torch.Tensor
    logits: torch.Tensor | None = None
    graph: torch.cuda.CUDAGraph | None = None


class DecodeRunner:
    """Runs decode steps of ``model`` over ``blocks`` (see module docstring). ``graphs``: replay CUDA graphs
    where the device allows (module docstring); it takes one block of ``blocks`` for the padding rows."""

    def __init__(self, model: CausalLM, blocks: KVBlocks, graphs: bool = False) -> None:
        self.model = model
        self.blocks = blocks
        self.rotary: RotaryTables = model.rotary(model.shape.max_positions)
        self.paged = paged_attention.available(model.device, model.shape.head_dim)
        self.sink: int | None = None
        if graphs and self.paged:
            self.sink = blocks.reserve()
        # the longest block table: the context window's, or the whole pool's if that is smaller
        self.width = min(-(-model.shape.max_positions // blocks.block_size), blocks.capacity)
        self._graphs: dict[int, _Graph] = {}
        self._pool = None

    @torch.inference_mode()
    def step(self, seqs: list[Sequence]) -> list[int]:
        """Feed each request's pending token, store its K/V, return each request's next token."""
        size = next((b for b in GRAPH_BATCHES if b >= len(seqs)), None) if self.sink is not None else None
        if size is None or any(len(q.blocks) > self.width for q in seqs):
            return self._sample(seqs, self._eager(seqs))
        g = self._graphs.get(size) or self._capture(size)
        if g is None:
            return self._sample(seqs, self._eager(seqs))
        rows, paged = self._padding(size)
        bs = self.blocks.block_size
        n = len(seqs)
        rows[:, :n] = torch.tensor([[q.pending, q.rope_position(q.kv_len), q.blocks[q.kv_len // bs], q.kv_len % bs]
                                    for q in seqs]).T
        for i, q in enumerate(seqs):
            paged[i] = q.kv_len + 1
            at = size + i * self.width
            used = q.kv_len // bs + 1  # the blocks the kernel reads: up to the one the new token lands in
            paged[at:at + used] = torch.tensor(q.blocks[:used], dtype=torch.int32)
        g.rows.copy_(rows)
        g.paged.copy_(paged)
        g.graph.replay()
        return self._sample(seqs, g.logits[:len(seqs)])

    def _padding(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Host buffers of a graph's inputs with every row a padding row: token 0 at position 0, written to
        slot 0 of the sink block, seeing that one key."""
        rows = torch.zeros(4, size, dtype=torch.long)
        rows[2] = self.sink
        paged = torch.full((size * (1 + self.width),), self.sink, dtype=torch.int32)
        paged[:size] = 1
        return rows, paged

    def _capture(self, size: int) -> _Graph | None:
        """Capture the decode step for ``size`` rows (all padding while capturing: only the sink is written).
        A capture that fails turns graphs off for good (logged), so later steps run eagerly instead of
        failing their batch again."""
        dev = self.model.device
        rows, paged = self._padding(size)
        g = _Graph(size, rows.to(dev), paged.to(dev))
        try:
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):  # compile the Triton kernels and warm cuBLAS outside the capture
                self._layers(*self._graph_inputs(g))
            torch.cuda.current_stream(dev).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()  # one pool: buckets replay one at a time
            g.graph = torch.cuda.CUDAGraph()
            # thread-local: a store thread's CUDA work (tiers) must not break the capture
            with torch.cuda.graph(g.graph, pool=self._pool, capture_error_mode="thread_local"):
                g.logits = self._layers(*self._graph_inputs(g))
        except RuntimeError:
            log.exception("capturing the decode step for %d rows failed; decoding without CUDA graphs", size)
            self.sink = None  # graphs off; the reserved block stays out of the pool
            return None
        self._graphs[size] = g
        return g

    def _graph_inputs(self, g: _Graph) -> tuple:
        """The ``_layers`` arguments as views of a graph's buffers."""
        tables = g.paged[g.size:].view(g.size, self.width)
        return g.rows[0], g.rows[1], (g.rows[2], g.rows[3]), tables, g.paged[:g.size], None, None

    def _eager(self, seqs: list[Sequence]) -> torch.Tensor:
        """The step's logits [B, vocab] without a graph."""
        dev = self.model.device
        width = max(len(q.blocks) for q in seqs)
        tables = torch.tensor([q.blocks + [q.blocks[0]] * (width - len(q.blocks)) for q in seqs], device=dev)
        slot = torch.tensor([q.kv_len for q in seqs], device=dev)
        rope = torch.tensor([q.rope_position(q.kv_len) for q in seqs], device=dev)
        tokens = torch.tensor([q.pending for q in seqs], device=dev)
        lengths = (slot + 1).to(torch.int32)
        return self._layers(tokens, rope, self.blocks.slots(tables, slot), tables.to(torch.int32), lengths,
                            tables, slot)

    def _layers(self, tokens: torch.Tensor, rope: torch.Tensor, where: tuple[torch.Tensor, torch.Tensor],
                tables32: torch.Tensor, lengths: torch.Tensor, tables: torch.Tensor | None,
                slot: torch.Tensor | None) -> torch.Tensor:
        """Logits [B, vocab] of one token per row: ``tokens`` at RoPE positions ``rope``, K/V stored at
        ``where`` (blocks, offsets), attention over the first ``lengths`` keys of each row's block table
        (``tables32`` int32 for the paged kernel; ``tables`` and ``slot`` for gather + SDPA without it)."""
        model, s = self.model, self.model.shape
        masks: dict[int | None, torch.Tensor] = {}
        h = model.embed(tokens)
        for layer in range(s.n_layers):
            q, k, v = model.qkv(layer, h)  # q [H, B, D], k/v [Hkv, B, D]
            cos, sin = self.rotary.get(model.layer_type(layer))
            q = rope_rows(q, cos, sin, rope)  # one RoPE position per request
            k = rope_rows(k, cos, sin, rope)
            self.blocks.write_token(layer, where, k.transpose(0, 1), v.transpose(0, 1))
            window = model.windows[layer]
            if self.paged:  # the blocks read in place (models/paged_attention.py)
                attn = paged_attention.paged_decode_attention(q.transpose(0, 1), self.blocks.k[layer],
                                                              self.blocks.v[layer], tables32, lengths,
                                                              model.scaling, window)
            else:
                if window not in masks:
                    masks[window] = self._mask(slot, tables.shape[1] * self.blocks.block_size, window)
                attn = self._attend(q, *self.blocks.gather(layer, tables), masks[window])
            h = model.finish_layer(layer, h, attn)
        return model.head(h)

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
