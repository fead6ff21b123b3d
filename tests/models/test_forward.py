"""Our layer-by-layer forward equals transformers' own forward (fp32), for both packaged models."""

from __future__ import annotations

import json

import pytest
import torch

from chunkcache.engine.executor import partial_prefill
from chunkcache.engine.prompt import Layout, Span
from chunkcache.models.base import UnsupportedModelError
from chunkcache.models.loader import load_model, resolve_model_dir
from chunkcache.strategies.base import Plan


def _full_logits(model, ids: torch.Tensor) -> torch.Tensor:
    n = ids.shape[0]
    layout = Layout(Span(0, 0), [], Span(0, n))
    return partial_prefill(model, ids, layout, None, [], Plan(torch.arange(n)), reserve=0)


@pytest.mark.parametrize("which, length", [("smol", 300), ("gemma", 700)])
def test_logits_match_transformers(which, length, request):
    model, _ = request.getfixturevalue(which)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 30000, (length,), generator=gen)
    ours = _full_logits(model, ids).logits
    with torch.inference_mode():
        ref = model.hf(ids[None]).logits[0, -1].float()
    assert torch.max(torch.abs(ours - ref)).item() < 1e-3


def test_gemma_has_sliding_and_global_layers(gemma):
    model, _ = gemma
    assert model.windows.count(None) == 3 and set(model.windows) == {512, None}


def test_unknown_family_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(UnsupportedModelError, match="gpt2.*not supported"):
        load_model(tmp_path)


def test_missing_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a packaged model"):
        resolve_model_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model_dir(tmp_path)


def test_qwen2_config_with_layer_types_matches_transformers():
    """A Qwen2 config lists ``layer_types`` (for attention windows) while its rotary module takes no layer
    type: a small random-weight Qwen2 must load and match transformers (this used to raise a TypeError)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from chunkcache.models.loader import wrap

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      layer_types=["full_attention"] * 3)
    hf = Qwen2ForCausalLM(cfg).eval()
    model = wrap(hf)
    ids = torch.randint(0, 512, (40,))
    ours = _full_logits(model, ids).logits
    with torch.inference_mode():
        ref = hf(ids[None]).logits[0, -1].float()
    assert torch.max(torch.abs(ours - ref)).item() < 1e-4


@pytest.mark.slow
def test_evaluation_model_matches_transformers():
    """The packaged evaluation model (Qwen2.5-Coder-1.5B-Instruct, ``scripts/install.sh --eval-model``)."""
    try:
        model, _ = load_model("qwen2.5-coder-1.5b")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    assert model.config.model_type == "qwen2" and model.shape.n_layers == 28
    ids = torch.randint(10, 30000, (300,), generator=torch.Generator().manual_seed(2))
    ours = _full_logits(model, ids).logits
    with torch.inference_mode():
        ref = model.hf(ids[None]).logits[0, -1].float()
    assert torch.max(torch.abs(ours - ref)).item() < 2e-3
