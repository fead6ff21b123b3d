"""RoPE in one pass on CUDA: gather the cos/sin rows, rotate, and scatter to the destination rows at once.

``x * cos + rotate_half(x) * sin`` in PyTorch is five kernels (two products, a negation, a concatenation,
a sum) plus two gathers of the tables, each a full pass over the tensor; placing every cached key of a
request, and the queries and keys of every layer of a partial prefill, paid that many launches and
passes (about a fifth of a short plan's GPU time in a profile on an H100). This kernel reads x and the two
table rows once and writes the rotated rows, in float32 arithmetic with one rounding at the end (the
unfused path rounds three times in bf16, so results agree to bf16 precision, not bit for bit).

Rotation in the half-split layout of Hugging Face Llama-family checkpoints, x = [x₁, x₂]:
    out₁ = x₁·cos₁ − x₂·sin₁,   out₂ = x₂·cos₂ + x₁·sin₂   (RoFormer, arXiv 2104.09864, eq. 34).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: models/rope.py keeps the PyTorch path
    triton = None

BLOCK_T = 32


def available(x: torch.Tensor) -> bool:
    """Whether the kernel can rotate ``x``: on CUDA with Triton, head size a power of two from 16."""
    d = x.shape[-1]
    return triton is not None and x.is_cuda and d >= 16 and d & (d - 1) == 0


def rope_kernel(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor | None,
                out: torch.Tensor, rows: torch.Tensor | None) -> None:
    """Write x [..., T, D] rotated to table rows ``pos`` [T] (None: 0..T-1) into ``out`` [..., rows, :]
    (``rows`` [T] or None: 0..T-1). ``out``'s leading dims must flatten to one without a copy."""
    t, d = x.shape[-2], x.shape[-1]
    if t == 0:
        return
    x3 = x.reshape(-1, t, d)
    o3 = out.view(-1, out.shape[-2], d)
    if x3.stride(-1) != 1 or o3.stride(-1) != 1 or cos.stride(-1) != 1 or sin.stride(-1) != 1:
        raise ValueError("rope_kernel needs the last dimension contiguous")
    dummy = x3  # any tensor: the constexpr flags keep it unread
    grid = (triton.cdiv(t, BLOCK_T), x3.shape[0])
    _rope[grid](x3, cos, sin, dummy if pos is None else pos, o3, dummy if rows is None else rows,
                x3.stride(0), x3.stride(1), o3.stride(0), o3.stride(1), cos.stride(0), sin.stride(0), t,
                HALF=d // 2, BLOCK_T=BLOCK_T, HAS_POS=pos is not None, HAS_ROWS=rows is not None, num_warps=4)


if triton is not None:

    @triton.jit
    def _rope(X, COS, SIN, POS, OUT, ROWS, s_xb, s_xt, s_ob, s_ot, s_c, s_s, n_tok, HALF: tl.constexpr,
              BLOCK_T: tl.constexpr, HAS_POS: tl.constexpr, HAS_ROWS: tl.constexpr):
        b = tl.program_id(1)
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        valid = t < n_tok
        d = tl.arange(0, HALF)
        pos = t
        if HAS_POS:
            pos = tl.load(POS + t, mask=valid, other=0)
        dst = t
        if HAS_ROWS:
            dst = tl.load(ROWS + t, mask=valid, other=0)
        m = valid[:, None]
        src = X + b * s_xb + t[:, None] * s_xt + d[None, :]
        x1 = tl.load(src, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF, mask=m, other=0.0).to(tl.float32)
        c = COS + pos[:, None] * s_c + d[None, :]
        s = SIN + pos[:, None] * s_s + d[None, :]
        c1 = tl.load(c, mask=m, other=0.0).to(tl.float32)
        c2 = tl.load(c + HALF, mask=m, other=0.0).to(tl.float32)
        s1 = tl.load(s, mask=m, other=0.0).to(tl.float32)
        s2 = tl.load(s + HALF, mask=m, other=0.0).to(tl.float32)
        o = OUT + b * s_ob + dst[:, None] * s_ot + d[None, :]
        tl.store(o, (x1 * c1 - x2 * s1).to(OUT.dtype.element_ty), mask=m)
        tl.store(o + HALF, (x2 * c2 + x1 * s2).to(OUT.dtype.element_ty), mask=m)
