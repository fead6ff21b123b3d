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
