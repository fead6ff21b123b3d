"""The compute floor of a prefill: the least time any implementation could take on this device.

A prefill must do 2·P_layer FLOPs per computed token per layer (projections and MLP), 4·H·D per query-key
pair of attention (scores and weighted values), and one lm_head row per pass; and it must read every
weight once per pass and every reused K/V once. Over the device's measured matrix rate and copy bandwidth
these give two times; the larger is the floor (the roofline bound, Williams et al., CACM 2009). A strategy
that probes first (focus) makes two passes, so it reads the weights twice: the floor charges that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chunkcache.engine.executor import PrefillResult
from chunkcache.models.base import CausalLM


@dataclass
class Peaks:
    """Measured ceilings: bf16 matrix FLOP/s and device-memory bytes/s (read + written)."""

    flops: float
    bandwidth: float


def measure_peaks(device: torch.device, repeats: int = 20) -> Peaks:
    """Median of ``repeats`` timings of an 8192³ bf16 matrix product and a 1 GiB device-to-device copy, on
    random data (zeros can run faster than real data)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    src = torch.randn(1 << 29, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)

    def median_ms(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]

    mm = median_ms(lambda: a @ b)
    cp = median_ms(lambda: dst.copy_(src))
    return Peaks(flops=2 * 8192 ** 3 / (mm / 1e3), bandwidth=2 * src.numel() * 2 / (cp / 1e3))


def params_per_layer(model: CausalLM) -> int:
    """Parameters of one decoder layer: 2× this is the FLOPs per token per layer of its matrix products."""
    return sum(p.numel() for p in model.layers[0].parameters())


def prefill_work(model: CausalLM, passes: list[PrefillResult], reused_tokens: int) -> tuple[float, float]:
    """(FLOPs, bytes) a prefill made of ``passes`` (the probe's and the plan's) must at least do and move,
    reading ``reused_tokens`` tokens' cached K/V once."""
    s = model.shape
    layer_params = params_per_layer(model)
    head_params = model.hf.lm_head.weight.numel()
    width = model.dtype.itemsize
    flops = 0.0
    for result in passes:
        flops += 2.0 * layer_params * sum(result.computed_per_layer)
        flops += 4.0 * s.n_heads * s.head_dim * sum(result.attended_per_layer)
        flops += 2.0 * head_params
    weight_bytes = (s.n_layers * layer_params + head_params) * width
    kv_bytes = 2 * s.n_layers * s.n_kv_heads * s.head_dim * width * reused_tokens
    return flops, len(passes) * weight_bytes + kv_bytes


def floor_ms(flops: float, nbytes: float, peaks: Peaks) -> float:
    """max(FLOPs / matrix rate, bytes / bandwidth) in milliseconds."""
    return 1e3 * max(flops / peaks.flops, nbytes / peaks.bandwidth)
