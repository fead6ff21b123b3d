"""Attention of a selected query set on CUDA: cost ∝ (selected queries × keys), GQA without K/V copies.

A partial prefill (engine/executor.py) computes only the positions S_l its plan selects, scattered over a
prompt of L tokens, against all L merged keys. PyTorch's fused kernels serve that badly: the causal flash
kernel needs a dense query block (scattering S_l into L rows computes all L² / 2 query-key pairs, which is
why a 20%-recompute plan cost as much attention as a full prefill; docs/benchmarks.md), and the masked
kernel needs an explicit [|S_l|, L] mask and, on CUDA, K/V expanded to every query head.

This is FlashAttention-2's forward (Dao, arXiv 2307.08691, Algorithm 1: one pass over key blocks with the
running max m and normaliser ℓ, O = diag(ℓ)^-1 · Σ_j exp(S_j − m) V_j) with three changes:
- each query row carries its own position p_i, and key j is visible iff j ≤ p_i (and p_i − j < window
  for a sliding-window layer), so a query block's key loop ends at max(p_i) + 1 of its rows;
- query head h reads key/value head h // (H / H_kv) in place (grouped-query attention);
- the output is written as [Tq, H·D], the layout the output projection reads, with no transpose.

A query block holds 64 selected rows; sorted positions keep its rows close, so little of its key range is
masked out. The same kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors, which
is how the default test suite checks it against SDPA.
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: models/base.py then keeps every path on SDPA
    triton = None

BLOCK_M = 64
BLOCK_N = 64


def available(q: torch.Tensor) -> bool:
    """Whether the executor should run attention for queries ``q`` [H, Tq, D] here: a CUDA tensor, Triton
    installed, and a power-of-two head size from 16 to 256. (Tests call ``selected_attention`` directly on
    CPU tensors under Triton's interpreter.)"""
    d = q.shape[-1]
    return triton is not None and q.is_cuda and d >= 16 and d <= 256 and d & (d - 1) == 0


def selected_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, scale: float,
                       window: int | None = None) -> torch.Tensor:
    """Causal attention of queries q [H, Tq, D] at ascending positions ``q_pos`` [Tq] over keys and values
    k, v [H_kv, L, D] of positions 0..L-1 (module docstring). Returns [Tq, H·D] in q's dtype."""
    n_heads, n_q, d = q.shape
    n_kv, n_keys = k.shape[0], k.shape[1]
    if n_heads % n_kv or v.shape[:2] != k.shape[:2] or q_pos.shape != (n_q,):
        raise ValueError("selected_attention: mismatched shapes")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    pos = q_pos.to(device=q.device, dtype=torch.int32)
    out = torch.empty(n_q, n_heads * d, device=q.device, dtype=q.dtype)
    if n_q == 0:
        return out
    grid = (triton.cdiv(n_q, BLOCK_M), n_heads)
    _forward[grid](q, k, v, out, pos, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0),
                   v.stride(1), out.stride(0), n_q, n_keys, n_heads // n_kv, scale * math.log2(math.e), window or 0,
                   HEAD_DIM=d, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, WINDOWED=window is not None,
                   INTERPRETED=os.environ.get("TRITON_INTERPRET") == "1", IEEE=q.dtype == torch.float32,
                   num_warps=4, num_stages=3)
    return out


if triton is not None:

    @triton.jit
    def _dot(a, b, IEEE: tl.constexpr):
        """a @ b with float32 accumulation; ``IEEE`` (float32 models): full-precision products, not Triton's
        default TF32."""
        if IEEE:
            return tl.dot(a, b, input_precision="ieee")
        return tl.dot(a, b)

    @triton.jit
    def _accumulate(s, vb, m_i, l_i, acc, IEEE: tl.constexpr):
        """One online-softmax step (FlashAttention-2, Algorithm 1, lines 8–10): fold the base-2 logits ``s``
        [rows, keys] (−inf where masked) and their values ``vb`` [keys, D] into the running max ``m_i``,
        normaliser ``l_i`` and output ``acc``. Also the paged decode kernel's (models/paged_attention.py)."""
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen no key yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        return m_new, l_i * alpha + tl.sum(p, axis=1), acc * alpha[:, None] + _dot(p.to(vb.dtype), vb, IEEE)

    @triton.jit
    def _key_block(q, pos, k_base, v_base, s_kn, s_vn, start, hi, window, m_i, l_i, acc, scale_log2, dims,
                   BLOCK_N: tl.constexpr, WINDOWED: tl.constexpr, IEEE: tl.constexpr):
        """One step of the online softmax over keys start..start+BLOCK_N-1."""
        cols = start + tl.arange(0, BLOCK_N)
        in_range = cols < hi
        kt = tl.load(k_base + cols[None, :] * s_kn + dims[:, None], mask=in_range[None, :], other=0.0)
        s = _dot(q, kt, IEEE) * scale_log2
        seen = (cols[None, :] <= pos[:, None]) & in_range[None, :]
        if WINDOWED:
            seen = seen & (pos[:, None] - cols[None, :] < window)
        s = tl.where(seen, s, float("-inf"))
        vb = tl.load(v_base + cols[:, None] * s_vn + dims[None, :], mask=in_range[:, None], other=0.0)
        return _accumulate(s, vb, m_i, l_i, acc, IEEE)

    @triton.jit
    def _forward(Q, K, V, O, POS, s_qh, s_qm, s_kh, s_kn, s_vh, s_vn, s_om, n_q, n_keys, groups, scale_log2,
                 window, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 WINDOWED: tl.constexpr, INTERPRETED: tl.constexpr, IEEE: tl.constexpr):
        head = tl.program_id(1)
        kv_head = head // groups
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HEAD_DIM)
        valid = rows < n_q
        pos = tl.load(POS + rows, mask=valid, other=0)
        q = tl.load(Q + head * s_qh + rows[:, None] * s_qm + dims[None, :], mask=valid[:, None], other=0.0)
        first = tl.program_id(0) * BLOCK_M
        hi = tl.minimum(tl.load(POS + tl.minimum(first + BLOCK_M, n_q) - 1) + 1, n_keys)  # rows ascend
        lo = hi * 0
        if WINDOWED:
            lo = tl.maximum(tl.load(POS + first) - window + 1, 0)
            lo = (lo // BLOCK_N) * BLOCK_N
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        k_base = K + kv_head * s_kh
        v_base = V + kv_head * s_vh
        if INTERPRETED:  # the interpreter cannot take a loaded bound in range(); compiled, only a for loop pipelines
            start = lo
            while start < hi:
                m_i, l_i, acc = _key_block(q, pos, k_base, v_base, s_kn, s_vn, start, hi, window, m_i, l_i, acc,
                                           scale_log2, dims, BLOCK_N, WINDOWED, IEEE)
                start += BLOCK_N
        else:
            for start in range(lo, hi, BLOCK_N):
                m_i, l_i, acc = _key_block(q, pos, k_base, v_base, s_kn, s_vn, start, hi, window, m_i, l_i, acc,
                                           scale_log2, dims, BLOCK_N, WINDOWED, IEEE)
        acc = acc / l_i[:, None]
        tl.store(O + rows[:, None] * s_om + head * HEAD_DIM + dims[None, :], acc.to(O.dtype.element_ty),
                 mask=valid[:, None])
