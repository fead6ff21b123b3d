"""RoPE placement with the model's own rotary function.

Keys are cached before RoPE (DESIGN section 2.3), so placing a chunk at any position is one rotation.
We never re-derive frequencies: the cos/sin tables come from the loaded model's own ``rotary_emb``
module, so plain, linear, dynamic-NTK, YaRN and Llama-3 scaling (and Gemma 3's per-layer-type bases)
are honoured exactly as ``transformers`` applies them in a full prefill.
"""

from __future__ import annotations

import inspect

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Half rotation of the last dimension, the convention of Llama-family checkpoints in HF layout."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [heads, tokens, head_dim] by per-token tables ``cos``/``sin`` [tokens, head_dim]."""
    return x * cos + rotate_half(x) * sin


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
