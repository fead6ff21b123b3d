"""The CUDA kernels (selected-query attention, paged decode attention, fused RoPE, fused RMSNorm and SiLU·up)
checked on the CPU under Triton's interpreter.

Triton reads TRITON_INTERPRET when a kernel is defined, so the checks run in a child interpreter started
with it set; on a CUDA machine tests/engine/test_cuda.py runs the compiled kernels through the executor.
Every check draws fresh random inputs, poisons the output first, and compares with SDPA / ``apply_rope``
in float64.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def _check_selected_attention() -> None:
    import torch
    import torch.nn.functional as F

    from chunkcache.models.base import attention_mask
    from chunkcache.models.selected_attention import selected_attention

    torch.manual_seed(0)
    cases = [  # heads, kv heads, head dim, keys, queries, window
        (4, 2, 16, 200, 37, None),  # GQA, a partial last query block
        (4, 1, 32, 130, 130, None),  # every position (multi-query)
        (2, 2, 16, 300, 70, 50),  # sliding window: blocks that start past the window
        (4, 2, 16, 65, 1, None),  # one query (decode)
        (2, 1, 16, 150, 100, None),  # dense, two query blocks
    ]
    for heads, kv_heads, dim, keys, n_q, window in cases:
        q = torch.randn(heads, n_q, dim)
        k = torch.randn(kv_heads, keys + 9, dim)[:, :keys]  # a view of a larger buffer, as in the executor
        v = torch.randn(kv_heads, keys, dim)
        pos = torch.sort(torch.randperm(keys)[:n_q]).values
        pos[-1] = keys - 1
        out = selected_attention(q, k, v, pos, dim ** -0.5, window)
        mask = attention_mask(pos, keys, window)
        ref = F.scaled_dot_product_attention(q[None].double(), k[None].double(), v[None].double(), attn_mask=mask,
                                             scale=dim ** -0.5, enable_gqa=True)[0].transpose(0, 1).reshape(n_q, -1)
        err = float((out.double() - ref).norm() / ref.norm())
        assert out.shape == ref.shape and err < 1e-5, (heads, kv_heads, dim, keys, n_q, window, err)
        # the key range cut in splits (Flash-Decoding), some of which a query block or a window cannot see
        for splits in (2, 3):
            part = selected_attention(q, k, v, pos, dim ** -0.5, window, splits=splits)
            err = float((part.double() - ref).norm() / ref.norm())
            assert err < 1e-5, (heads, kv_heads, dim, keys, n_q, window, splits, err)
        # a wrong position must change the result: the mask is really per query row
        shifted = pos.clone()
        shifted[0] = min(int(pos[0]) + 5, keys - 1)
        moved = selected_attention(q, k, v, torch.sort(shifted).values, dim ** -0.5, window)
        if int(shifted[0]) != int(pos[0]):
            assert not torch.allclose(moved, out)


def _check_rope() -> None:
    import torch

    from chunkcache.models.rope import apply_rope
    from chunkcache.models.rope_kernel import rope_kernel

    torch.manual_seed(1)
    positions, dim = 300, 32
    angles = torch.rand(positions, dim // 2) * 6.0
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    # gather + scatter: 40 tokens at scattered RoPE positions into scattered rows of a larger buffer
    x = torch.randn(5, 40, dim)
    pos = torch.randint(0, positions, (40,))
    rows = torch.randperm(100)[:40]
    out = torch.full((5, 100, dim), float("nan"))
    rope_kernel(x, cos, sin, pos, out, rows)
    ref = apply_rope(x.double(), cos[pos].double(), sin[pos].double())
    assert torch.allclose(out[:, rows].double(), ref, atol=1e-5)
    untouched = torch.ones(100, dtype=torch.bool)
    untouched[rows] = False
    assert bool(out[:, untouched].isnan().all())
    # all layers at once: [layers, heads, T, D] into the first T slots of a [layers, heads, T + 7, D] buffer
    x4 = torch.randn(3, 2, 50, dim)
    buf = torch.full((3, 2, 57, dim), float("nan"))
    rope_kernel(x4, cos, sin, None, buf[:, :, :50], None)
    assert torch.allclose(buf[:, :, :50].double(), apply_rope(x4.double(), cos[:50].double(), sin[:50].double()),
                          atol=1e-5)
    assert bool(buf[:, :, 50:].isnan().all())


def _check_paged_decode() -> None:
    """Against SDPA in float64 over each request's blocks gathered by hand: GQA, multi-query, a sliding window,
    blocks smaller than a key tile, a one-token request; and a request's output bit for bit the same alone as
    in a batch (decode must not depend on the other running requests)."""
    import torch
    import torch.nn.functional as F

    from chunkcache.models.paged_attention import paged_decode_attention

    torch.manual_seed(3)
    for heads, kv_heads, dim, block, window in ((8, 2, 16, 16, None), (4, 4, 32, 8, None), (6, 2, 16, 16, 40),
                                                (4, 1, 16, 4, None)):
        k_pool, v_pool = torch.randn(40, block, kv_heads, dim), torch.randn(40, block, kv_heads, dim)
        lengths = torch.tensor([1, 37, 130, 64])
        width = -(-130 // block)
        tables = torch.stack([torch.randperm(40)[:width] for _ in range(4)])  # blocks in any order
        q = torch.randn(4, heads, dim)
        out = paged_decode_attention(q, k_pool, v_pool, tables, lengths, dim ** -0.5, window)
        for b in range(4):
            n = int(lengths[b])
            k = k_pool[tables[b]].reshape(-1, kv_heads, dim)[:n].transpose(0, 1).double()
            v = v_pool[tables[b]].reshape(-1, kv_heads, dim)[:n].transpose(0, 1).double()
            mask = torch.ones(1, n, dtype=torch.bool)
            if window is not None:
                mask[:, :max(0, n - window)] = False
            ref = F.scaled_dot_product_attention(q[b][:, None].double(), k, v, attn_mask=mask, scale=dim ** -0.5,
                                                 enable_gqa=True)[:, 0].reshape(-1)
            err = float((out[b].double() - ref).norm() / ref.norm())
            assert err < 1e-5, (heads, kv_heads, dim, block, window, b, err)
        own = -(-37 // block)  # request 1 alone: its table no longer padded to the batch's widest
        alone = paged_decode_attention(q[1:2], k_pool, v_pool, tables[1:2, :own], lengths[1:2], dim ** -0.5, window)
        assert torch.equal(alone, out[1:2])


def _check_layer_kernels() -> None:
    """In float32 (the interpreter truncates to bf16 where CUDA rounds, so bf16 parity is checked on CUDA,
    tests/engine/test_cuda.py): the fused kernels equal the transformers modules they replace, on a hidden
    size that is not a power of two (masked lanes) and several rows."""
    import torch
    import torch.nn.functional as F
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from chunkcache.models.layer_kernels import rms_norm, silu_mul

    torch.manual_seed(2)
    norm = LlamaRMSNorm(300, eps=1e-5)
    norm.weight.data = torch.randn(300)
    x = torch.randn(7, 300) * 3
    out = rms_norm(x, norm.weight, norm.variance_epsilon)
    assert torch.allclose(out, norm(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(rms_norm(x, norm.weight, 1.0), out, rtol=1e-3)  # eps is really used
    rows = rms_norm(x[2:3], norm.weight, norm.variance_epsilon)
    assert torch.allclose(rows, out[2:3], rtol=1e-6, atol=0)  # each row is normalised on its own
    gate, up = torch.randn(5, 333), torch.randn(5, 333)
    assert torch.allclose(silu_mul(gate, up), F.silu(gate) * up, rtol=1e-5, atol=1e-6)


def test_kernels_under_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kernels ok" in done.stdout


if __name__ == "__main__":
    _check_selected_attention()
    _check_rope()
    _check_paged_decode()
    _check_layer_kernels()
    print("kernels ok")
