"""Cost-constrained, cache-aware chunk selection (rag/select.py)."""

from __future__ import annotations

import numpy as np
import pytest

from chunkcache.rag.select import Candidate, select_chunks


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_budget_is_respected_and_hot_chunks_are_preferred_at_equal_relevance():
    cold = [Candidate(0.8, 200, False, 0.15, unit(1, 0, 0, 0)), Candidate(0.8, 200, False, 0.15, unit(0, 1, 0, 0))]
    hot = [Candidate(0.8, 200, True, 0.15, unit(0, 0, 1, 0)), Candidate(0.8, 200, True, 0.15, unit(0, 0, 0, 1))]
    cands = cold + hot
    for budget in (100, 260, 300, 500, 700):
        chosen = select_chunks(cands, budget, question_tokens=20)
        assert sum(cands[i].cost for i in chosen) + 20 <= budget
    assert select_chunks(cands, 100, question_tokens=20) == [2, 3]  # two hot chunks cost 60 tokens
    assert set(select_chunks(cands, 300, question_tokens=20)) == {0, 2, 3}  # then one cold one fits
    assert set(select_chunks(cands, 1000, question_tokens=20)) == {0, 1, 2, 3}


def test_weak_and_redundant_chunks_are_left_out_even_when_they_fit():
    a = unit(1, 0, 0)
    cands = [Candidate(0.9, 100, False, 0.15, a),
             Candidate(0.89, 100, False, 0.15, a),  # the same content again
             Candidate(0.85, 100, False, 0.15, unit(0, 1, 0)),
             Candidate(0.3, 10, True, 0.15, unit(0, 0, 1))]  # cheap, but far less relevant than the best
    assert select_chunks(cands, 10_000) == [0, 2]


def test_when_nothing_fits_the_most_relevant_chunk_is_still_given():
    cands = [Candidate(0.7, 500, False, 0.15), Candidate(0.9, 800, False, 0.15), Candidate(0.9, 600, False, 0.15)]
    assert select_chunks(cands, 100) == [2]
    assert select_chunks([], 100) == []
    with pytest.raises(ValueError, match="positive"):
        select_chunks(cands, 0)


def test_one_strong_chunk_beats_many_cheap_weak_ones():
    """The budgeted-greedy guard: greedy by gain per cost would fill the budget with cheap chunks."""
    cands = [Candidate(1.0, 900, False, 0.15)] + [Candidate(0.8, 100, False, 0.15, unit(*np.eye(9)[i]))
                                                  for i in range(9)]
    chosen = select_chunks(cands, 900, floor=0.79)
    assert chosen == [0]
