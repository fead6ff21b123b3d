"""A Llama-family layer's elementwise work fused into single kernels on CUDA: RMSNorm and SiLU(gate)·up.

Why. A partial prefill that computes few tokens (``naive``: the question only) is bound by the host issuing
kernels, not by the GPU running them: on an H100 at 8K context it spent 14 ms of GPU work in 33.5 ms of
wall time over about 28 launches a layer (docs/benchmarks.md, issue 6). Hugging Face's ``LlamaRMSNorm`` is
eight launches (two casts, a power, a mean, an add, a reciprocal square root, two products) and the MLP's
``act(gate) * up`` two; a layer has two norms. Each kernel here is one launch and one pass over its input.

What. Both reproduce the unfused ``transformers`` arithmetic, roundings included, so a model's output stays
what it was to within one bf16 rounding step where float32 results differ in their last bits (a reduction's
order, the GPU's approximate exp and square root). Tests compare them under Triton's interpreter in float32
and on CUDA in bf16; the CPU path never uses them:

    RMSNorm (Zhang and Sennrich, NeurIPS 2019, eq. 4):  y = w · bf16(x / √(mean(x²) + ε))   in float32
    SwiGLU  (Shazeer, arXiv 2002.05202, eq. 6):          y = bf16(SiLU(g)) · u                 in float32

with one rounding to the model's dtype at the end of each, as the unfused kernels round each result.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs keep the transformers modules
    triton = None


def available(x: torch.Tensor) -> bool:
    """Whether the fused kernels can run on ``x``: on CUDA with Triton."""
    return triton is not None and x.is_cuda


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``LlamaRMSNorm``'s output for ``x`` [T, H] (module docstring), in one launch."""
    if x.dim() != 2 or x.stride(-1) != 1 or weight.shape != (x.shape[1],) or weight.stride(0) != 1:
        raise ValueError("rms_norm takes a [tokens, hidden] tensor with a contiguous last dim and a [hidden] weight")
    out = torch.empty(x.shape, device=x.device, dtype=torch.promote_types(weight.dtype, x.dtype))
    if x.shape[0]:
        _rms_norm[(x.shape[0],)](x, weight, out, x.stride(0), out.stride(0), x.shape[1], eps,
                                 BLOCK=triton.next_power_of_2(x.shape[1]), num_warps=8)
    return out


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``SiLU(gate) * up`` for [T, I] tensors of one dtype, rounded as the two unfused kernels round."""
    if gate.shape != up.shape or gate.dtype != up.dtype or gate.dim() != 2:
        raise ValueError("silu_mul takes two [tokens, intermediate] tensors of one shape and dtype")
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    if n:
        _silu_mul[(triton.cdiv(n, SILU_BLOCK),)](gate, up, out, n, BLOCK=SILU_BLOCK, num_warps=4)
    return out


SILU_BLOCK = 1024

if triton is not None:

    @triton.jit
    def _rms_norm(X, W, OUT, s_x, s_o, n, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        m = cols < n
        x = tl.load(X + row * s_x + cols, mask=m, other=0.0).to(tl.float32)
        inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n + eps)
        normed = (x * inv).to(X.dtype.element_ty).to(tl.float32)  # HF rounds to the input dtype first
        w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(OUT + row * s_o + cols, (w * normed).to(OUT.dtype.element_ty), mask=m)

    @triton.jit
    def _silu_mul(G, U, OUT, n, BLOCK: tl.constexpr):
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # T·I passes 2³¹ past ~110K tokens
        m = i < n
        g = tl.load(G + i, mask=m, other=0.0).to(tl.float32)
        u = tl.load(U + i, mask=m, other=0.0).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(G.dtype.element_ty).to(tl.float32)  # SiLU's own rounding
        tl.store(OUT + i, (act * u).to(OUT.dtype.element_ty), mask=m)
