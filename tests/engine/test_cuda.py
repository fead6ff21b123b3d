"""The executor's identities on a CUDA device (skipped without one; run with --runslow on a GPU host).

Uses a small random Llama so the test needs no packaged weights on the GPU machine."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from chunkcache.bench.ttft import SyntheticTemplate
from chunkcache.engine.executor import partial_prefill
from chunkcache.engine.prompt import Layout, Span
from chunkcache.kv.build import isolated_record, template_record
from chunkcache.models.loader import wrap
from chunkcache.strategies import make_strategy
from chunkcache.strategies.base import Plan, Request

pytestmark = pytest.mark.gpu


def _model(dtype):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
    return wrap(LlamaForCausalLM(cfg).to("cuda", dtype).eval())


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_cuda_full_and_reuse_identities(dtype, tol):
    model = _model(dtype)
    template = SyntheticTemplate(list(range(1, 17)))
    prefix = template_record(model, template, dtype).to("cuda", dtype)
    chunks = [torch.randint(0, 1000, (300,)).tolist() for _ in range(3)]
    ids, spans = list(template.prefix_ids), []
    for c in chunks:
        spans.append(Span(len(ids), len(ids) + 300))
        ids += c
    layout = Layout(Span(0, 16), spans, Span(len(ids), len(ids) + 8), ["a", "b", "c"])
    ids = torch.tensor(ids + list(range(900, 908)), device="cuda")
    with torch.inference_mode():
        ref = model.hf(ids[None]).logits[0, -1].float()
    full = partial_prefill(model, ids, layout, prefix, [None] * 3, Plan(torch.arange(len(ids))))
    assert ((full.logits - ref).norm() / ref.norm()).item() < tol
    recs = [isolated_record(model, template, prefix, c, n, dtype).to("cuda", dtype) for c, n in zip(chunks, "abc")]
    first_only = partial_prefill(model, ids, layout, prefix, [recs[0], None, None],
                                 Plan(torch.arange(spans[1].start, len(ids))))
    assert ((first_only.logits - full.logits).norm() / full.logits.norm()).item() < tol
    for spec in ("naive", "epic", "cacheblend", "cachecraft"):
        d = make_strategy(spec).decide(Request(layout, [[r] for r in recs], model.shape.n_layers))
        out = partial_prefill(model, ids, layout, prefix, d.records, d.plan)
        assert torch.isfinite(out.logits).all(), spec


def test_cuda_greedy_decode_matches_transformers():
    from chunkcache.engine.decode import generate

    model = _model(torch.float32)
    ids = torch.randint(0, 1000, (200,), device="cuda")
    layout = Layout(Span(0, 0), [], Span(0, 200))
    pre = partial_prefill(model, ids, layout, None, [], Plan(torch.arange(200)), reserve=10)
    ours = list(generate(model, pre, 10, stop_ids=set()))
    with torch.inference_mode():
        ref = model.hf.generate(ids[None], max_new_tokens=10, do_sample=False, eos_token_id=None,
                                pad_token_id=0)[0, 200:].tolist()
    assert ours == ref
