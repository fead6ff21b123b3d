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
masked out.

Few query rows over many keys (``naive``: only the question is computed, 64 rows over 8K keys) would give a
grid of one block per head, 32 programs on a GPU of 132 multiprocessors, each walking every key. There the key
range is split as in Flash-Decoding (Dao et al., 2023): each split runs the loop above over its own keys and
writes its unnormalised output with its m and ℓ, and a second kernel merges the S splits of each row,
O = Σ_s 2^(m_s − M) O_s / Σ_s 2^(m_s − M) ℓ_s with M = max_s m_s (the same identity the online softmax uses
between key blocks). The same kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors, which
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
# Split the key range while the grid has fewer programs than this many per multiprocessor, into splits of
# at least MIN_SPLIT_KEYS keys and at most MAX_SPLITS of them.
PROGRAMS_PER_SM = 2
MIN_SPLIT_KEYS = 1024
MAX_SPLITS = 16


def available(q: torch.Tensor) -> bool:
    """Whether the executor should run attention for queries ``q`` [H, Tq, D] here: a CUDA tensor, Triton
    installed, and a power-of-two head size from 16 to 256. (Tests call ``selected_attention`` directly on
    CPU tensors under Triton's interpreter.)"""
    d = q.shape[-1]
    return triton is not None and q.is_cuda and d >= 16 and d <= 256 and d & (d - 1) == 0


def selected_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, scale: float,
                       window: int | None = None, splits: int | None = None) -> torch.Tensor:
    """Causal attention of queries q [H, Tq, D] at ascending positions ``q_pos`` [Tq] over keys and values
    k, v [H_kv, L, D] of positions 0..L-1 (module docstring). Returns [Tq, H·D] in q's dtype.

    ``splits``: how many parts the key range is cut into; None chooses from the grid and the GPU's size
    (module docstring), 1 never splits."""
    n_heads, n_q, d = q.shape
    n_kv, n_keys = k.shape[0], k.shape[1]
    if n_heads % n_kv or v.shape[:2] != k.shape[:2] or q_pos.shape != (n_q,):
        raise ValueError("selected_attention: mismatched shapes")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    pos = q_pos.to(device=q.device, dtype=torch.int32)
    out = torch.empty(n_q, n_heads * d, device=q.device, dtype=q.dtype)
    if n_q == 0:
        return out
    blocks = triton.cdiv(n_q, BLOCK_M)
    if splits is None:
        reach = n_keys if window is None else min(n_keys, window + BLOCK_M)  # keys one query block can see
        splits = _splits(q.device, blocks * n_heads, reach)
    span = triton.cdiv(triton.cdiv(n_keys, max(1, splits)), BLOCK_N) * BLOCK_N  # keys per split
    splits = triton.cdiv(n_keys, span)
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    common = dict(HEAD_DIM=d, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, WINDOWED=window is not None,
                  INTERPRETED=interpreted, IEEE=q.dtype == torch.float32)
    args = (q, k, v, pos, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), n_q,
            n_keys, n_heads // n_kv, scale * math.log2(math.e), window or 0, span)
    if splits == 1:
        _forward[(blocks, n_heads, 1)](*args, out, out, out, out.stride(0), 0, SPLIT=False, **common,
                                       num_warps=4, num_stages=3)
        return out
    part = torch.empty(splits, n_q, n_heads * d, device=q.device, dtype=torch.float32)
    stat = torch.empty(2, splits, n_q, n_heads, device=q.device, dtype=torch.float32)  # m, ℓ
    _forward[(blocks, n_heads, splits)](*args, part, stat[0], stat[1], part.stride(1), part.stride(0), SPLIT=True,
                                        **common, num_warps=4, num_stages=3)
    _merge[(n_q, n_heads)](part, stat[0], stat[1], out, splits, part.stride(0), part.stride(1), out.stride(0),
                           n_heads, HEAD_DIM=d, SPLITS=triton.next_power_of_2(splits), num_warps=4)
    return out


_SM_COUNT: dict[int, int] = {}


def _splits(device: torch.device, programs: int, n_keys: int) -> int:
    """Key splits for a grid of ``programs`` whose query blocks each see up to ``n_keys`` keys (see
    PROGRAMS_PER_SM)."""
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    wanted = _SM_COUNT[index] * PROGRAMS_PER_SM
    if programs >= wanted:
        return 1
    return max(1, min(triton.cdiv(wanted, programs), n_keys // MIN_SPLIT_KEYS, MAX_SPLITS))


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
    def _forward(Q, K, V, POS, s_qh, s_qm, s_kh, s_kn, s_vh, s_vn, n_q, n_keys, groups, scale_log2, window, span,
                 O, M, L, s_om, s_os, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 WINDOWED: tl.constexpr, INTERPRETED: tl.constexpr, IEEE: tl.constexpr, SPLIT: tl.constexpr):
        """One block of query rows of one head over the keys of split ``program_id(2)``. Unsplit, writes the
        normalised output to O [Tq, H·D]; split, writes the unnormalised output to O [S, Tq, H·D] and the
        running max and normaliser to M, L [S, Tq, H]."""
        head = tl.program_id(1)
        split = tl.program_id(2)
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
        lo = tl.maximum(lo, split * span)  # span is a multiple of BLOCK_N: blocks stay aligned
        hi = tl.minimum(hi, split * span + span)
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
        if SPLIT:
            n_heads = tl.num_programs(1)
            tl.store(O + split.to(tl.int64) * s_os + rows[:, None] * s_om + head * HEAD_DIM + dims[None, :], acc,
                     mask=valid[:, None])
            at = (split * n_q + rows) * n_heads + head
            tl.store(M + at, m_i, mask=valid)
            tl.store(L + at, l_i, mask=valid)
        else:
            acc = acc / l_i[:, None]
            tl.store(O + rows[:, None] * s_om + head * HEAD_DIM + dims[None, :], acc.to(O.dtype.element_ty),
                     mask=valid[:, None])

    @triton.jit
    def _merge(PART, M, L, O, splits, s_ps, s_pm, s_om, n_heads, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
        """Output of one row and head from its ``splits`` partial results (module docstring). A split whose
        keys the row cannot see has m = −inf and ℓ = 0 and weighs nothing."""
        row = tl.program_id(0)
        head = tl.program_id(1)
        parts = tl.arange(0, SPLITS)
        used = parts < splits
        at = (parts * tl.num_programs(0) + row) * n_heads + head
        m = tl.load(M + at, mask=used, other=float("-inf"))
        l_s = tl.load(L + at, mask=used, other=0.0)
        top = tl.max(m, axis=0)
        w = tl.where(m == float("-inf"), 0.0, tl.exp2(m - top))
        dims = tl.arange(0, HEAD_DIM)
        acc = tl.load(PART + parts[:, None] * s_ps + row * s_pm + head * HEAD_DIM + dims[None, :],
                      mask=used[:, None], other=0.0)
        out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l_s * w, axis=0)
        tl.store(O + row * s_om + head * HEAD_DIM + dims, out.to(O.dtype.element_ty))
