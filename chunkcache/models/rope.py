"""RoPE placement with the model's own rotary function.

Keys are cached before RoPE (DESIGN section 2.3), so placing a chunk at any position is one rotation.
We never re-derive frequencies: the cos/sin tables come from the loaded model's own ``rotary_emb``
module, so plain, linear, dynamic-NTK, YaRN and Llama-3 scaling (and Gemma 3's per-layer-type bases)
are honoured exactly as ``transformers`` applies them in a full prefill.
"""

from __future__ import annotations

import inspect

import torch

from chunkcache.models import rope_kernel


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Half rotation of the last dimension, the convention of Llama-family checkpoints in HF layout."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [heads, tokens, head_dim] by per-token tables ``cos``/``sin`` [tokens, head_dim]."""
    return x * cos + rotate_half(x) * sin


def rope_rows(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor | None = None,
              out: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` [..., T, D] rotated to the table rows ``pos`` [T] of ``cos``/``sin`` [positions, D] (None: rows
    0..T-1). With ``out`` the result is written to ``out[..., rows, :]`` (``rows`` None: the first T) and
    ``out`` returned; otherwise a new tensor. On CUDA one fused kernel does the gather, the rotation and the
    scatter (models/rope_kernel.py); elsewhere ``apply_rope``, bit for bit as before."""
    if rope_kernel.available(x):
        if out is None:
            out, rows = torch.empty(x.shape, device=x.device, dtype=x.dtype), None
        rope_kernel.rope_kernel(x, cos, sin, pos, out, rows)
        return out
    t = x.shape[-2]
    rotated = apply_rope(x, cos[:t] if pos is None else cos[pos], sin[:t] if pos is None else sin[pos])
    if out is None:
        return rotated
    if rows is None:
        out[..., :t, :] = rotated
    else:
        out[..., rows, :] = rotated
    return out


class RotaryTables:
    """cos/sin tables for positions ``0..length-1`` per layer type, computed by the model's rotary module.

    Built once per request: the total length fixes dynamic-NTK's frequencies the same way a full prefill
    of that length would.
    """

    def __init__(self, rotary_emb: torch.nn.Module, layer_types: list[str] | None, length: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self._rotary = rotary_emb
        # Per-layer-type tables only where the rotary module takes a layer type (Gemma 3's local and global
        # bases). Other families (Qwen2, Llama) may list ``layer_types`` in their config for attention
        # windows while their rotary has one table for every layer.
        takes_type = "layer_type" in inspect.signature(rotary_emb.forward).parameters
        self._layer_types = layer_types if takes_type else None
        self._device = device
        self._dtype = dtype
        self._tables: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}
        self.length = 0
        self.extend(length)

    def extend(self, length: int) -> None:
        """Make the tables cover at least ``length`` positions (decode grows the sequence)."""
        if length <= self.length:
            return
        positions = torch.arange(length, device=self._device)[None]
        probe = torch.empty(0, device=self._device, dtype=self._dtype)
        kinds = sorted(set(self._layer_types)) if self._layer_types else [None]
        for kind in kinds:
            if kind is None:
                cos, sin = self._rotary(probe, positions)
            else:
                cos, sin = self._rotary(probe, positions, kind)
            self._tables[kind] = (cos[0], sin[0])
        self.length = length

    def get(self, layer_type: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [length, head_dim] for a layer of ``layer_type``."""
        return self._tables[layer_type if self._layer_types else None]
