"""Llama-family forward (Llama 2/3, SmolLM2, Mistral, Qwen2, Qwen3): pre-norm blocks, GQA, RoPE.

Qwen3 adds RMSNorm on q and k per head before RoPE; Qwen2 carries q/k/v biases inside its projections.
"""

from __future__ import annotations

import torch

from chunkcache.models.base import CausalLM


class LlamaLM(CausalLM):
    family = "llama"
    fused_layers = True

    def _window(self, layer: int) -> int | None:
        cfg = self.config
        if getattr(cfg, "use_sliding_window", True) is False:
            return None
        types = getattr(cfg, "layer_types", None)
        if types is not None and types[layer] != "sliding_attention":
            return None
        return getattr(cfg, "sliding_window", None)

    def _qk_norm(self, layer: int, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attn = self.layers[layer].self_attn
        if hasattr(attn, "q_norm"):
            return attn.q_norm(q), attn.k_norm(k)
        return q, k
