"""Gemma 3 forward: sandwich norms, per-head q/k RMSNorm, scaled embeddings, local/global layers.

Differences from Llama (Gemma 3 technical report, arXiv 2503.19786): attention scale is
``query_pre_attn_scalar**-0.5``; ``sliding_attention`` layers see a window of ``sliding_window`` keys and
use the local RoPE base, ``full_attention`` layers the global one (both come from the model's rotary
module per layer type); the attention and MLP outputs are normalised before the residual add.
"""

from __future__ import annotations

import torch

from chunkcache.models.base import CausalLM


class Gemma3LM(CausalLM):
    family = "gemma3"

    def _scaling(self) -> float:
        return float(self.config.query_pre_attn_scalar) ** -0.5

    def _window(self, layer: int) -> int | None:
        if self.config.layer_types[layer] == "sliding_attention":
            return self.config.sliding_window
        return None

    def _qk_norm(self, layer: int, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attn = self.layers[layer].self_attn
        return attn.q_norm(q), attn.k_norm(k)

    def finish_layer(self, layer: int, h: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        block = self.layers[layer]
        h = h + block.post_attention_layernorm(block.self_attn.o_proj(attn))
        return h + block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(h)))
