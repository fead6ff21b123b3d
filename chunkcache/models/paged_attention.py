"""Decode attention that reads each request's K/V in place from the paged pool (engine/kv_blocks.py).

Why. The batched decode step (engine/runner.py) gathered every running request's blocks into one
contiguous [B, H_kv, n, D] tensor per layer before calling SDPA: 32 requests of 8K context on a Llama-3-8B
shape copy 1 GiB of K/V per layer, 32 GiB a step, which is what bound decode at 602 tokens/s on the H100
(docs/benchmarks.md). PagedAttention (Kwon et al., SOSP 2023, arXiv 2309.06180, section 4.1) reads the
blocks through the block table instead; this is that kernel, written as FlashAttention-2's forward (Dao,
arXiv 2307.08691, Algorithm 1: the running max m and normaliser ℓ over key tiles) for one query token per
request.

What. One program per (request b, KV head g) computes the G = H / H_kv query heads that share g as the rows
of one tile (GQA without K/V copies), over keys 0..n_b − 1 of request b, taken BLOCK_N at a time: key j
lives at pool[table[b, j // block_size], j % block_size, g]. A sliding-window layer masks keys before
n_b − window and starts its loop at the tile holding the first key it keeps. Each request's arithmetic
depends only on its own keys and the fixed tile sizes, so a request's output does not depend on the others
in the batch. It runs under Triton's interpreter on CPU
tensors for the default tests (tests/models/test_kernels.py); on CUDA the decode step uses it.
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the decode step keeps gather + SDPA
    triton = None
else:
    from chunkcache.models.selected_attention import _accumulate, _dot

BLOCK_N = 64


def available(device: torch.device, head_dim: int) -> bool:
    """Whether decode attention of a model with ``head_dim`` on ``device`` can run here: CUDA, Triton, a
    power-of-two head size from 16 to 256 (decided once per decode step)."""
    return triton is not None and device.type == "cuda" and 16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, tables: torch.Tensor,
                           lengths: torch.Tensor, scale: float, window: int | None = None) -> torch.Tensor:
    """Attention of one query token per request, q [B, H, D], over that request's first ``lengths[b]`` keys
    in one layer's pool k_pool, v_pool [blocks, block_size, H_kv, D] through its block table ``tables``
    [B, width] (module docstring). Returns [B, H·D] in q's dtype."""
    b, n_heads, d = q.shape
    n_kv, block_size = k_pool.shape[2], k_pool.shape[1]
    if n_heads % n_kv or v_pool.shape != k_pool.shape or tables.shape[0] != b or lengths.shape != (b,):
        raise ValueError("paged_decode_attention: mismatched shapes")
    if k_pool.stride(-1) != 1 or v_pool.stride(-1) != 1 or k_pool.dtype != q.dtype or v_pool.dtype != q.dtype:
        raise ValueError("paged_decode_attention needs the pool in q's dtype, its last dimension contiguous")
    groups = n_heads // n_kv
    q = q if q.stride(-1) == 1 else q.contiguous()
    out = torch.empty(b, n_heads * d, device=q.device, dtype=q.dtype)
    if b == 0:
        return out
    # no-ops for what the decode step passes (int32, on the device, built once per step)
    tables = tables.to(device=q.device, dtype=torch.int32).contiguous()
    lengths = lengths.to(device=q.device, dtype=torch.int32)
    _decode[(b, n_kv)](q, k_pool, v_pool, out, tables, lengths, q.stride(0), q.stride(1),
                       k_pool.stride(0), k_pool.stride(1), k_pool.stride(2), v_pool.stride(0), v_pool.stride(1),
                       v_pool.stride(2), tables.stride(0), out.stride(0), groups, block_size,
                       scale * math.log2(math.e), window or 0, HEAD_DIM=d, ROWS=max(16, triton.next_power_of_2(groups)),
                       BLOCK_N=BLOCK_N, WINDOWED=window is not None,
                       INTERPRETED=os.environ.get("TRITON_INTERPRET") == "1", IEEE=q.dtype == torch.float32,
                       num_warps=4)
    return out


if triton is not None:

    @triton.jit
    def _tile(q, k_base, v_base, table, s_kb, s_kt, s_vb, s_vt, block_size, start, n, lo, m_i, l_i, acc, scale_log2,
              dims, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
        """One step of the online softmax over keys start..start+BLOCK_N-1, read through the block table."""
        cols = start + tl.arange(0, BLOCK_N)
        seen = (cols < n) & (cols >= lo)
        blk = tl.load(table + cols // block_size, mask=seen, other=0).to(tl.int64)
        slot = cols % block_size
        kt = tl.load(k_base + blk[None, :] * s_kb + slot[None, :] * s_kt + dims[:, None], mask=seen[None, :],
                     other=0.0)
        s = tl.where(seen[None, :], _dot(q, kt, IEEE) * scale_log2, float("-inf"))
        vb = tl.load(v_base + blk[:, None] * s_vb + slot[:, None] * s_vt + dims[None, :], mask=seen[:, None],
                     other=0.0)
        return _accumulate(s, vb, m_i, l_i, acc, IEEE)

    @triton.jit
    def _decode(Q, K, V, O, TABLES, LENGTHS, s_qb, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_tb, s_ob, groups,
                block_size, scale_log2, window, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
                WINDOWED: tl.constexpr, INTERPRETED: tl.constexpr, IEEE: tl.constexpr):
        b = tl.program_id(0)
        g = tl.program_id(1)
        rows = tl.arange(0, ROWS)
        valid = rows < groups
        dims = tl.arange(0, HEAD_DIM)
        heads = g * groups + rows
        q = tl.load(Q + b * s_qb + heads[:, None] * s_qh + dims[None, :], mask=valid[:, None], other=0.0)
        n = tl.load(LENGTHS + b)
        lo = n * 0
        if WINDOWED:
            lo = tl.maximum(n - window, 0)
        first = (lo // BLOCK_N) * BLOCK_N
        m_i = tl.full([ROWS], float("-inf"), tl.float32)
        l_i = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, HEAD_DIM], tl.float32)
        table = TABLES + b * s_tb
        k_base = K + g * s_kh
        v_base = V + g * s_vh
        if INTERPRETED:  # the interpreter cannot take a loaded bound in range()
            start = first
            while start < n:
                m_i, l_i, acc = _tile(q, k_base, v_base, table, s_kb, s_kt, s_vb, s_vt, block_size, start, n, lo,
                                      m_i, l_i, acc, scale_log2, dims, BLOCK_N, IEEE)
                start += BLOCK_N
        else:
            for start in range(first, n, BLOCK_N):
                m_i, l_i, acc = _tile(q, k_base, v_base, table, s_kb, s_kt, s_vb, s_vt, block_size, start, n, lo,
                                      m_i, l_i, acc, scale_log2, dims, BLOCK_N, IEEE)
        acc = acc / l_i[:, None]
        tl.store(O + b * s_ob + heads[:, None] * HEAD_DIM + dims[None, :], acc.to(O.dtype.element_ty),
                 mask=valid[:, None])
