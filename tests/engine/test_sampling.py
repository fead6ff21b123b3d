"""Token picking: greedy, temperature with a seed, and top-p truncation."""

from __future__ import annotations

import pytest
import torch

from chunkcache.engine.decode import Sampling, pick


def test_greedy_and_seeded_sampling():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    assert pick(logits, Sampling(), None) == 1
    s = Sampling(temperature=1.0, seed=3)
    a = [pick(logits, s, torch.Generator().manual_seed(3)) for _ in range(5)]
    b = [pick(logits, s, torch.Generator().manual_seed(3)) for _ in range(5)]
    assert a == b


def test_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([5.0, 4.9, -5.0, -5.0])  # the first two tokens hold almost all the mass
    s = Sampling(temperature=1.0, top_p=0.9)
    gen = torch.Generator().manual_seed(0)
    assert {pick(logits, s, gen) for _ in range(200)} <= {0, 1}


def test_bad_sampling_settings():
    with pytest.raises(ValueError):
        Sampling(temperature=-1)
    with pytest.raises(ValueError):
        Sampling(top_p=0)


def test_vanishing_temperature_or_top_p_is_greedy_not_an_error():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9]) * 50
    gen = torch.Generator().manual_seed(0)
    assert pick(logits, Sampling(temperature=1e-300), gen) == 1
    assert {pick(logits, Sampling(temperature=1.0, top_p=1e-300), gen) for _ in range(20)} == {1}
