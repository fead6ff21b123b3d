"""Paged KV memory for running requests: fixed-size blocks from one pool sized in bytes, and per-request
block tables (the vLLM PagedAttention layout, arXiv 2309.06180).

A request's prefill computes its prompt's K/V in request-local buffers (engine/executor.py, where chunk
records are merged in); the engine then copies them into the request's blocks once, and every decode step
appends one token's K/V into a block slot and attends over its blocks. Blocks hold keys already rotated
to their RoPE positions, so decode never rotates the past. Pool layout ``[layers, blocks, block_size,
kv_heads, head_dim]``: gathering a request's blocks gives ``[n, block_size, kv_heads, head_dim]``, whose
first two dimensions merge into token order without a copy.
"""

from __future__ import annotations

import math
import threading

import torch

from chunkcache.models.base import ModelShape


class KVBlocks:
    """A pool of KV blocks and its free list (thread-safe allocation)."""

    def __init__(self, shape: ModelShape, n_blocks: int, block_size: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        if n_blocks < 1 or block_size < 1:
            raise ValueError("the KV pool needs at least one block of at least one token")
        self.shape = shape
        self.block_size = block_size
        self.n_blocks = n_blocks
        size = (shape.n_layers, n_blocks, block_size, shape.n_kv_heads, shape.head_dim)
        self.k = torch.zeros(size, device=device, dtype=dtype)
        self.v = torch.zeros(size, device=device, dtype=dtype)
        self._free = list(range(n_blocks - 1, -1, -1))
        self._lock = threading.Lock()
        self.capacity = n_blocks  # blocks requests may hold: all but those ``reserve`` took

    def reserve(self) -> int:
        """Take one block for the engine's own use (engine/runner.py's padding rows) for good."""
        with self._lock:
            if not self._free:
                raise ValueError("no free KV block to reserve")
            self.capacity -= 1
            return self._free.pop()

    @classmethod
    def from_bytes(cls, shape: ModelShape, kv_bytes: int, block_size: int, device: torch.device,
                   dtype: torch.dtype) -> "KVBlocks":
        """As many blocks as fit in ``kv_bytes`` (K and V of every layer)."""
        per_block = 2 * shape.n_layers * block_size * shape.n_kv_heads * shape.head_dim * dtype.itemsize
        n = kv_bytes // per_block
        if n < 1:
            raise ValueError(f"kv_bytes={kv_bytes} is less than one block ({per_block} bytes)")
        return cls(shape, int(n), block_size, device, dtype)

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)

    @property
    def free_blocks(self) -> int:
        with self._lock:
            return len(self._free)

    def allocate(self, n: int) -> list[int] | None:
        """``n`` free blocks, or None (nothing taken) when fewer are free."""
        with self._lock:
            if n > len(self._free):
                return None
            return [self._free.pop() for _ in range(n)]

    def release(self, blocks: list[int]) -> None:
        with self._lock:
            self._free.extend(reversed(blocks))

    def write_prompt(self, blocks: list[int], keys: list[torch.Tensor], values: list[torch.Tensor],
                     length: int) -> None:
        """Copy a prefill's rotated K and V (per layer ``[kv_heads, >= length, head_dim]``) of slots
        0..length-1 into ``blocks``: one copy for all layers."""
        n = self.blocks_for(length)
        idx = torch.tensor(blocks[:n], device=self.k.device)
        for pool, src in ((self.k, keys), (self.v, values)):
            stacked = torch.stack([t[:, :length] for t in src]).transpose(1, 2)  # [layers, length, Hkv, D]
            pad = n * self.block_size - length
            if pad:
                stacked = torch.nn.functional.pad(stacked, (0, 0, 0, 0, 0, pad))
            pool[:, idx] = stacked.reshape(pool.shape[0], n, self.block_size, *pool.shape[3:]).to(pool.dtype)

    def slots(self, tables: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block, offset) of token slot ``slot[b]`` of request b with block table ``tables[b]``."""
        rows = torch.arange(tables.shape[0], device=tables.device)
        return tables[rows, slot // self.block_size], slot % self.block_size

    def write_token(self, layer: int, where: tuple[torch.Tensor, torch.Tensor], k: torch.Tensor,
                    v: torch.Tensor) -> None:
        """Store one token's K and V ``[B, kv_heads, head_dim]`` per request at ``where`` (``slots``)."""
        block, offset = where
        self.k[layer, block, offset] = k.to(self.k.dtype)
        self.v[layer, block, offset] = v.to(self.v.dtype)

    def gather(self, layer: int, tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V ``[B, kv_heads, n·block_size, head_dim]`` of the requests' block tables ``[B, n]``
        (tables padded with any valid block; the caller masks slots past each request's length)."""
        b, n = tables.shape
        k = self.k[layer, tables].reshape(b, n * self.block_size, *self.k.shape[3:]).transpose(1, 2)
        v = self.v[layer, tables].reshape(b, n * self.block_size, *self.v.shape[3:]).transpose(1, 2)
        return k, v
