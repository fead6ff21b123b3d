"""RoPE placement honours the config's scaling: our forward and chunk placement under linear, dynamic
(NTK), YaRN and Llama-3 scaling, on a small random Llama, agree with transformers."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from chunkcache.engine.executor import partial_prefill
from chunkcache.engine.prompt import Layout, Span
from chunkcache.kv.build import isolated_record, template_record
from chunkcache.models.loader import wrap
from chunkcache.strategies.base import Plan

SCALINGS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 10000.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64, "rope_theta": 500000.0},
}


class _Tok:
    """Just what PromptTemplate needs: a fixed template prefix of token ids."""

    chat_template = None
    bos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        class R:
            input_ids = [1, 5, 6, 7] if add_special_tokens else [5, 6, 7]
        return R()


def _tiny(scaling: dict):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      rope_parameters=scaling)
    return wrap(LlamaForCausalLM(cfg).eval())


@pytest.mark.parametrize("kind", list(SCALINGS))
def test_forward_matches_transformers(kind):
    model = _tiny(SCALINGS[kind])
    ids = torch.randint(0, 300, (200,))
    n = ids.shape[0]
    ours = partial_prefill(model, ids, Layout(Span(0, 0), [], Span(0, n)), None, [], Plan(torch.arange(n))).logits
    with torch.inference_mode():
        ref = model.hf(ids[None]).logits[0, -1]
    assert torch.max(torch.abs(ours - ref)).item() < 1e-4


@pytest.mark.parametrize("kind", list(SCALINGS))
def test_placement_matches_fresh_computation(kind):
    """A chunk's record (keys before RoPE) placed after the template prefix gives the same rotated keys
    as computing the whole prompt, under every scaling."""
    from chunkcache.engine.prompt import PromptTemplate

    model = _tiny(SCALINGS[kind])
    template = PromptTemplate(_Tok())
    prefix = template_record(model, template, torch.float32)
    chunk = torch.randint(0, 300, (150,)).tolist()
    rec = isolated_record(model, template, prefix, chunk, "c0", torch.float32)
    ids, layout = template.assemble([chunk], [9, 10, 11], ["c0"])
    full = partial_prefill(model, ids, layout, None, [None], Plan(torch.arange(len(ids))))
    reused = partial_prefill(model, ids, layout, prefix, [rec], Plan(layout.question.range()))
    span = layout.chunks[0]
    for a, b in zip(full.keys, reused.keys):
        assert torch.max(torch.abs(a[:, span.start:span.end] - b[:, span.start:span.end])).item() < 1e-4
    assert torch.max(torch.abs(full.logits - reused.logits)).item() < 1e-4
