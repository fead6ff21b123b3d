"""Decode from the merged KV a prefill left behind: greedy or temperature/top-p sampling."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from chunkcache.engine.executor import PrefillResult
from chunkcache.models.base import CausalLM
from chunkcache.models.rope import rope_rows


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")


# Below this temperature, logits / temperature can overflow float32 (softmax then gives NaN): it means "only
# the most likely token", so it is greedy.
GREEDY_TEMPERATURE = 1e-5


def pick(logits: torch.Tensor, sampling: Sampling, gen: torch.Generator | None) -> int:
    """Next token from float32 logits [vocab]. Nucleus (top-p) sampling always keeps the most likely token, so
    a top_p that rounds to 0 is greedy rather than an empty distribution."""
    if sampling.temperature < GREEDY_TEMPERATURE:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < sampling.top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def _step(model: CausalLM, prefill: PrefillResult, token: int, pos: int) -> torch.Tensor:
    """Run ``token`` in slot ``pos`` over the prefill's KV: write its K/V into slot ``pos`` (a decode slot
    the prefill reserved, past ``prefill.length``; rotated to the slot's RoPE position, which a parallel
    placement puts right after its question) and return the next-token logits [vocab]."""
    h = model.embed(torch.tensor([token], device=model.device))
    q_pos = torch.tensor([pos], device=model.device)
    rope = torch.tensor([prefill.rope_position(pos)], device=model.device)
    for layer in range(model.shape.n_layers):
        q, k, v = model.qkv(layer, h)
        cos, sin = prefill.rotary.get(model.layer_type(layer))
        prefill.keys[layer][:, pos] = rope_rows(k, cos, sin, rope)[:, 0]
        prefill.values[layer][:, pos] = v[:, 0]
        q_rot = rope_rows(q, cos, sin, rope)
        attn = model.attend(layer, q_rot, prefill.keys[layer][:, :pos + 1], prefill.values[layer][:, :pos + 1],
                            q_pos, pos + 1)
        h = model.finish_layer(layer, h, attn)
    return model.head(h)[0]


def _check_capacity(prefill: PrefillResult, steps: int) -> None:
    if prefill.length + steps - 1 > prefill.keys[0].shape[1]:
        raise ValueError("prefill reserved too few slots for this many new tokens")


@torch.inference_mode()
def generate(model: CausalLM, prefill: PrefillResult, max_new_tokens: int, stop_ids: set[int],
             sampling: Sampling = Sampling()) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` tokens, stopping after a token in ``stop_ids`` (not yielded).

    The prefill must have reserved ``max_new_tokens`` slots (``partial_prefill(reserve=...)``)."""
    _check_capacity(prefill, max_new_tokens)
    gen = torch.Generator().manual_seed(sampling.seed) if sampling.temperature > 0 else None
    token = pick(prefill.logits, sampling, gen)
    pos = prefill.length
    for step in range(max_new_tokens):
        if token in stop_ids:
            return
        yield token
        if step == max_new_tokens - 1:
            return
        token = pick(_step(model, prefill, token, pos), sampling, gen)
        pos += 1


@torch.inference_mode()
def teacher_force(model: CausalLM, prefill: PrefillResult, forced: list[int]) -> torch.Tensor:
    """Logits [len(forced), vocab] (float32) of the distribution each forced token is drawn from: row 0 is the
    prefill's next-token logits, row i the logits after feeding ``forced[:i]`` through the decode step.

    Forcing another run's greedy answer into this prefill compares two prefills on the same continuation.
    Only the decode slots past ``prefill.length`` are written (as ``generate`` does); the prompt's KV and
    ``length`` stay as they were, so the prefill can be decoded or forced again. The prefill must have
    reserved ``len(forced)`` slots."""
    _check_capacity(prefill, len(forced))
    rows = [prefill.logits.float()] if forced else []
    for i, token in enumerate(forced[:-1]):
        rows.append(_step(model, prefill, token, prefill.length + i).float())
    if not rows:
        return prefill.logits.new_zeros(0, prefill.logits.shape[-1], dtype=torch.float32)
    return torch.stack(rows)
