"""Our own layer-by-layer forward pass over the weights of a ``transformers`` causal LM.

The partial-prefill executor (engine/executor.py) must run each decoder layer over an arbitrary subset of
token positions while attention reads a merged KV of cached and fresh entries. ``transformers``' forward
cannot do that, so a family adapter exposes the pieces of one decoder layer:

    h  = embed(ids)
    q, k, v = qkv(layer, h)            # k before RoPE — the form chunk records store
    h  = finish_layer(layer, h, attn)  # o_proj, residual, MLP (+ the family's extra norms)
    logits = head(h)

Weights stay in the ``transformers`` modules (no copy); only the control flow is ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from chunkcache.models import layer_kernels, selected_attention
from chunkcache.models.rope import RotaryTables


# Query density above which the scattered causal kernel beats the masked one (measured: H100, Llama-3-8B
# shape at 8K keys, equal at 20%; 2-core CPU, SmolLM2 at 5K keys, masked 2x faster at 22%, causal 2x
# faster at 90%).
DENSE_CUDA = 0.2
DENSE_CPU = 0.5
# On CUDA with Triton, query sets below this density go to the selected-query kernel
# (models/selected_attention.py) instead; above it the causal flash kernel over scattered queries wins
# (H100, 32 heads, 8 KV heads, 2026-11-23: at 8K keys 0.94 vs 1.20 ms at 60% density, 1.44 vs 1.40 ms
# at 100%; at 32K keys 13.6 vs 15.8 ms at 60%, 21.9 vs 16.8 ms at 100%).
DENSE_KERNEL = 0.8


class UnsupportedModelError(ValueError):
    """The model's family has no forward pass here."""


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    max_positions: int


@dataclass(frozen=True)
class AttentionMod:
    """How attention departs from plain causal attention for the query rows of one ``attend`` call
    (built by ``Placement.attention``)."""

    visible: torch.Tensor | None  # bool [Tq, k_len], ANDed with the causal (and window) mask; None: all
    context: torch.Tensor | None  # bool [k_len]: keys that tempered rows attend to with T and S; None: none
    tempered: torch.Tensor | None  # bool [Tq]: rows whose attention to ``context`` keys is tempered
    temperature: float = 1.0
    scale: float = 1.0

    @property
    def tempers(self) -> bool:
        return self.context is not None


@dataclass(frozen=True)
class Placement:
    """A request's prompt laid out otherwise than as one causal sequence at positions 0..L-1.

    * ``positions`` long [L]: the RoPE position of every prompt token (tokens may share one: parallel
      encoding places every chunk in the same range).
    * ``groups`` long [L] and ``sees`` bool [G, G]: an attention graph over segments. A token of group a
      attends to an earlier (by index) token of group b only if ``sees[a, b]``. None: every earlier token.
    * ``context`` bool [L] with ``temperature`` T and ``scale`` S: computed tokens outside ``context``
      attend to ``context`` tokens with temperature T and the context's total weight rescaled by S
      (APE, strategies/ape.py); T = S = 1 leaves attention unchanged.

    Causality stays by token index; the sliding window too (as ``transformers`` masks by cache position).
    """

    positions: torch.Tensor
    groups: torch.Tensor | None = None
    sees: torch.Tensor | None = None
    context: torch.Tensor | None = None
    temperature: float = 1.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.positions.dim() != 1 or (self.positions.numel() and int(self.positions.min()) < 0):
            raise ValueError("placement positions must be one non-negative position per token")
        n = self.positions.shape[0]
        if (self.groups is None) != (self.sees is None):
            raise ValueError("a placement's groups and sees come together")
        for name, t in (("groups", self.groups), ("context", self.context)):
            if t is not None and t.shape != (n,):
                raise ValueError(f"placement {name} must have one entry per token")
        if self.temperature <= 0 or self.scale <= 0:
            raise ValueError("attention temperature and scale must be > 0")

    def attention(self, rows: torch.Tensor, k_len: int, device: torch.device | None = None) -> AttentionMod | None:
        """The modification for query rows ``rows`` (token indices, on the host) over keys 0..k_len-1, on
        ``device`` (default: the rows'); None if none. Rows that see every earlier key (the question of a
        parallel layout) need no mask, so the plain causal kernels run for them."""
        dev = device if device is not None else rows.device
        rows = rows.cpu()
        visible = None
        if self.groups is not None:
            visible = self.sees[self.groups[rows]][:, self.groups[:k_len]]
            visible = None if bool(visible.all()) else visible.to(dev)
        if self.context is None or (self.temperature == 1.0 and self.scale == 1.0):
            return None if visible is None else AttentionMod(visible, None, None)
        context = self.context.to(dev)
        return AttentionMod(visible, context[:k_len], ~context[rows.to(dev)], self.temperature, self.scale)


class CausalLM:
    """A decoder-only LM driven layer by layer (see module docstring). Subclasses fill in the family."""

    family = "base"
    # Family hook: the norms are LlamaRMSNorm and the MLP LlamaMLP, so on CUDA they may run as the fused
    # kernels of models/layer_kernels.py.
    fused_layers = False

    def __init__(self, hf_model: torch.nn.Module, fingerprint: str) -> None:
        self.hf = hf_model.eval()
        self.config = hf_model.config
        self.fingerprint = fingerprint
        self.inner = hf_model.model
        self.layers = self.inner.layers
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.shape = ModelShape(
            n_layers=cfg.num_hidden_layers,
            n_heads=cfg.num_attention_heads,
            n_kv_heads=cfg.num_key_value_heads,
            head_dim=head_dim,
            hidden=cfg.hidden_size,
            max_positions=cfg.max_position_embeddings,
        )
        self.scaling = self._scaling()
        self.layer_types: list[str] | None = getattr(cfg, "layer_types", None)
        self.windows = [self._window(i) for i in range(self.shape.n_layers)]

    # --- family hooks -------------------------------------------------------------------------------
    def _scaling(self) -> float:
        return 1.0 / math.sqrt(self.shape.head_dim)

    def _window(self, layer: int) -> int | None:
        return getattr(self.config, "sliding_window", None)

    def _qk_norm(self, layer: int, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def finish_layer(self, layer: int, h: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual stream after layer ``layer``: ``h`` [T, hidden] in, attention output [T, H*D] in."""
        block = self.layers[layer]
        h = h + block.self_attn.o_proj(attn)
        return h + self._mlp(block.mlp, self._norm(block.post_attention_layernorm, h))

    def _norm(self, norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``norm(x)``, as one fused kernel where the family allows it (``fused_layers``)."""
        if self.fused_layers and layer_kernels.available(x):
            return layer_kernels.rms_norm(x.contiguous(), norm.weight, norm.variance_epsilon)
        return norm(x)

    def _mlp(self, mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``mlp(x)``, its SiLU(gate)·up fused into one kernel where the family allows it."""
        if self.fused_layers and self.config.hidden_act == "silu" and layer_kernels.available(x):
            return mlp.down_proj(layer_kernels.silu_mul(mlp.gate_proj(x), mlp.up_proj(x)))
        return mlp(x)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Hidden states [T, hidden] for token ids [T]."""
        return self.inner.embed_tokens(ids)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits [T, vocab] (float32) from final-layer hidden states [T, hidden]."""
        logits = self.hf.lm_head(self._norm(self.inner.norm, h)).float()
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # --- shared machinery ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.inner.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.embed_tokens.weight.dtype

    def layer_type(self, layer: int) -> str | None:
        return self.layer_types[layer] if self.layer_types else None

    def rotary(self, length: int) -> RotaryTables:
        """cos/sin tables for positions 0..length-1 from the model's own rotary module."""
        return RotaryTables(self.inner.rotary_emb, self.layer_types, length, self.device, self.dtype)

    def qkv(self, layer: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [H, T, D], k [Hkv, T, D] (before RoPE), v [Hkv, T, D] for hidden states h [T, hidden]."""
        s = self.shape
        attn = self.layers[layer].self_attn
        x = self._norm(self.layers[layer].input_layernorm, h)
        t = x.shape[0]
        q = attn.q_proj(x).view(t, s.n_heads, s.head_dim).transpose(0, 1)
        k = attn.k_proj(x).view(t, s.n_kv_heads, s.head_dim).transpose(0, 1)
        v = attn.v_proj(x).view(t, s.n_kv_heads, s.head_dim).transpose(0, 1)
        q, k = self._qk_norm(layer, q, k)
        return q, k, v

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               q_pos: torch.Tensor, k_len: int, mod: AttentionMod | None = None) -> torch.Tensor:
        """Attention of rotated queries q [H, Tq, D] at positions ``q_pos`` over rotated keys/values of
        positions 0..k_len-1 (causal, plus the layer's sliding window). Returns [Tq, H*D].

        ``mod`` (a request's ``Placement``, see there) restricts which keys each query sees and tempers the
        weight of context keys; None is plain causal attention."""
        if mod is not None:
            return self._attend_modified(layer, q, k, v, q_pos, k_len, mod)
        window = self.windows[layer]
        tq = q.shape[1]
        if tq < k_len * DENSE_KERNEL and selected_attention.available(q):
            return selected_attention.selected_attention(q, k, v, q_pos, self.scaling, window)
        kwargs = dict(scale=self.scaling, enable_gqa=self.shape.n_heads != self.shape.n_kv_heads)
        if window is None and tq >= k_len * (DENSE_CUDA if q.is_cuda else DENSE_CPU):
            # Dense query sets: scatter the queries into a zero [H, k_len, D] block and run the causal
            # (flash) kernel, which beats an explicit mask there; rows never asked for are computed and
            # dropped.
            if tq != k_len:
                q_all = q.new_zeros(q.shape[0], k_len, q.shape[2])
                q_all[:, q_pos] = q
                q = q_all
            out = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, **kwargs)
            if tq != k_len:
                out = out[:, :, q_pos]
            return out[0].transpose(0, 1).reshape(tq, -1)
        return self._masked_sdpa(q, k, v, attention_mask(q_pos, k_len, window))

    def _masked_sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """SDPA of q [H, Tq, D] over k, v [Hkv, k_len, D] under a boolean mask [Tq, k_len]. Returns [Tq, H*D]."""
        kwargs = dict(scale=self.scaling, enable_gqa=self.shape.n_heads != self.shape.n_kv_heads)
        if q.is_cuda and kwargs["enable_gqa"]:
            # CUDA's masked (memory-efficient) kernel has no GQA path: expand K/V rather than fall
            # back to the math kernel, which would materialise [H, Tq, k_len] scores.
            groups = self.shape.n_heads // self.shape.n_kv_heads
            k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
            kwargs["enable_gqa"] = False
        out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, **kwargs)
        return out[0].transpose(0, 1).reshape(q.shape[1], -1)

    def _attend_modified(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         q_pos: torch.Tensor, k_len: int, mod: AttentionMod) -> torch.Tensor:
        """``attend`` under a request's ``AttentionMod``.

        A mask-only modification runs the masked SDPA kernel. Tempering needs the context keys' LogSumExp,
        which fused kernels do not return, so it falls back (CPU and CUDA alike) to an explicit float32
        softmax over [H, Tq, k_len] scores: context logits s/T get the per-row bias (S·T − 1)·LSE_C, which
        gives each context key the weight exp(s/T)·Z_C^(S·T−1) / (Z_C^(S·T) + Z_N) (strategies/ape.py).
        """
        mask = attention_mask(q_pos, k_len, self.windows[layer])
        if mod.visible is not None:
            mask &= mod.visible
        if not mod.tempers:
            return self._masked_sdpa(q, k, v, mask)
        groups = self.shape.n_heads // self.shape.n_kv_heads
        vv = v.repeat_interleave(groups, dim=0).float()
        scores = self._scores(q, k)
        ctx = mod.tempered[:, None] & mod.context[None, :] & mask
        scores = torch.where(ctx, scores / mod.temperature, scores)
        lse_ctx = torch.logsumexp(scores.masked_fill(~ctx, float("-inf")), dim=-1, keepdim=True)
        bias = (mod.scale * mod.temperature - 1.0) * torch.nan_to_num(lse_ctx, neginf=0.0)
        scores = torch.where(ctx, scores + bias, scores).masked_fill(~mask, float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), vv).to(q.dtype)
        return out.transpose(0, 1).reshape(q.shape[1], -1)

    def attention_probs(self, layer: int, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor,
                        hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Explicit attention probabilities [H, Tq, Tk] (float32) for rotated q and k of positions 0..Tk-1;
        keys where ``hidden`` (bool [Tk]) is set are masked out.

        Fused kernels never return these; only record creation (Cache-Craft statistics) and the question
        probe (engine/probe.py) ask for them.
        """
        mask = attention_mask(q_pos, k.shape[1], self.windows[layer])
        if hidden is not None:
            mask &= ~hidden[None, :]
        return torch.softmax(self._scores(q, k).masked_fill(~mask, float("-inf")), dim=-1)

    def _scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Scaled attention logits [H, Tq, Tk] (float32) of q [H, Tq, D] against k [Hkv, Tk, D].

        On CUDA the G query heads that share a KV head are G row blocks of one product with it, so K is read
        once in float32 instead of expanded to every head (the probe's largest cost at long contexts). The CPU
        keeps the expanded product: a one-row product there takes another kernel whose roundings differ, and
        the CPU's results are the measured ones."""
        groups = self.shape.n_heads // self.shape.n_kv_heads
        if q.is_cuda:
            h, tq, d = q.shape
            grouped = q.float().reshape(k.shape[0], groups * tq, d)
            return (torch.matmul(grouped, k.float().transpose(1, 2)) * self.scaling).view(h, tq, -1)
        kk = k.repeat_interleave(groups, dim=0).float()
        return torch.matmul(q.float(), kk.transpose(1, 2)) * self.scaling


def attention_mask(q_pos: torch.Tensor, k_len: int, window: int | None) -> torch.Tensor:
    """Boolean [Tq, k_len]: key j is visible to a query at position i iff j <= i (and i - j < window)."""
    k_pos = torch.arange(k_len, device=q_pos.device)
    mask = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        mask &= (q_pos[:, None] - k_pos[None, :]) < window
    return mask
