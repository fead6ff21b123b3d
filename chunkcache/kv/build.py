"""The two ways a chunk record comes to exist (DESIGN section 2.3 and 3):

* ``isolated``: at ingest, the chunk is prefilled alone right after the template prefix;
* ``capture``: after a served request, each chunk's in-context K/V (as computed, fully or partly, in that
  request) becomes a variant keyed by the chunks that preceded it, so a later request with the same or a
  similar prefix can pick it (Cache-Craft's variant choice). The variant is exact only when the request
  computed it over exact states (``strategies.base.Decision.exact_chunks``); otherwise a later request
  placing it after the same chunks still has to repair it.
"""

from __future__ import annotations

import hashlib

import torch

from chunkcache.engine.executor import PrefillResult, partial_prefill
from chunkcache.engine.prompt import Layout, PromptTemplate, Span
from chunkcache.kv.record import ChunkRecord, host_copy
from chunkcache.kv.stats import AttentionStats
from chunkcache.models.base import CausalLM
from chunkcache.strategies.base import Plan

STORE_DTYPE = torch.bfloat16


def _slice(result: PrefillResult, span: Span, dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every layer's K (pre-RoPE) and V of ``span`` in host memory: one device-to-host copy each for K and V
    (into pinned memory when they come from a CUDA device, so the record is ready to go back at full link
    speed), not one per layer."""
    pin = result.keys_pre[0].is_cuda
    return tuple(host_copy([t[:, span.start:span.end] for t in layers], dtype, pin)
                 for layers in (result.keys_pre, result.values))


def kv_fingerprint(model: CausalLM, template: PromptTemplate) -> str:
    """Identity of the cache space: chunk records depend on the model and on the template prefix they were
    computed after."""
    return hashlib.sha256(f"{model.fingerprint}|{template.key}".encode()).hexdigest()[:32]


def template_record(model: CausalLM, template: PromptTemplate, dtype: torch.dtype = STORE_DTYPE) -> ChunkRecord:
    """K/V of the template prefix (positions 0..p-1): an exact prefix cache shared by every request."""
    ids = torch.tensor(template.prefix_ids)
    n = len(template.prefix_ids)
    layout = Layout(Span(0, n), [], Span(n, n))
    result = partial_prefill(model, ids, layout, None, [], Plan(torch.arange(n)))
    keys, values = _slice(result, Span(0, n), dtype)
    return ChunkRecord(f"template-{template.key}", list(template.prefix_ids), keys, values,
                       kv_fingerprint(model, template))


def isolated_record(model: CausalLM, template: PromptTemplate, prefix: ChunkRecord, token_ids: list[int],
                    chunk_id: str, dtype: torch.dtype = STORE_DTYPE) -> ChunkRecord:
    """Prefill one chunk alone after the template prefix and keep its K (pre-RoPE), V and statistics."""
    if not token_ids:
        raise ValueError("cannot build a record for an empty chunk")
    p = len(template.prefix_ids)
    n = len(token_ids)
    if p + n > model.shape.max_positions:
        raise ValueError(f"chunk of {n} tokens does not fit the model's window of {model.shape.max_positions}")
    ids = torch.tensor(template.prefix_ids + list(token_ids))
    span = Span(p, p + n)
    layout = Layout(Span(0, p), [span], Span(p + n, p + n), [chunk_id])
    stats = AttentionStats(layout, model.shape.n_layers)
    result = partial_prefill(model, ids, layout, prefix, [None], Plan(span.range()), stats=stats)
    keys, values = _slice(result, span, dtype)
    inter, intra, outside = stats.chunk(0)
    return ChunkRecord(chunk_id, list(token_ids), keys, values, prefix.fingerprint, [], inter, intra, outside,
                       exact=True)


def capture(fingerprint: str, result: PrefillResult, ids: torch.Tensor, layout: Layout,
            used: list[ChunkRecord | None], stats: AttentionStats | None, indices: list[int],
            identities: list[tuple[list[str], bool] | None], dtype: torch.dtype = STORE_DTYPE) -> list[ChunkRecord]:
    """Variants of the request's chunks ``indices`` as computed in context; ``identities[i]`` is (prefix ids,
    exact) of chunk i's states in this request (``Decision.identities``: for a sequential prompt the chunks
    before it, so chunk 0, right after the template prefix, is captured as its isolated record), and None
    skips the chunk. Chunks none of whose tokens were recomputed are skipped: their states
    are the reused record's. Without ``stats`` a variant keeps no statistics and
    Cache-Craft treats it with CCI 1. Statistics of layers/tokens that were not recomputed are taken from
    the layers/tokens that were (layer mean) or from the reused record (per-token outside attention)."""
    out = []
    for i in indices:
        if identities[i] is None:
            continue
        prefix_ids, exact = identities[i]
        span = layout.chunks[i]
        src = used[i]
        inter = intra = outside = None
        if stats is not None:
            inter, intra, outside = stats.chunk(i)
            if bool(torch.isnan(intra).all()):
                continue
            inter = _fill_layers(inter)
            intra = _fill_layers(intra[:, None])[:, 0]
            fallback = src.outside if src is not None and src.outside is not None else torch.zeros_like(outside)
            outside = torch.where(torch.isnan(outside), fallback.float(), outside)
        keys, values = _slice(result, span, dtype)
        token_ids = ids[span.start:span.end].tolist()
        out.append(ChunkRecord(layout.chunk_ids[i], token_ids, keys, values, fingerprint,
                               list(prefix_ids), inter, intra, outside, exact=exact))
    return out


def _fill_layers(x: torch.Tensor) -> torch.Tensor:
    """Replace NaN layers (no computed rows) by the mean of the computed ones."""
    bad = torch.isnan(x).any(dim=1)
    if bool(bad.any()):
        x = x.clone()
        x[bad] = x[~bad].mean(dim=0)
    return x
