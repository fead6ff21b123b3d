"""The question probe: what the question attends to in the reused context, before anything is repaired.

A query-aware strategy (strategies/focus.py) must know which context tokens the question needs before it
chooses what to recompute. The probe runs the ``naive`` plan — only the question's tokens, at every layer,
over the cached chunk K/V placed at their new positions — and records, at the chosen layers, the attention
probabilities of the question rows to every key (softmax over all keys, so the template prefix and the
question itself share the denominator). This is the "prophet" pass of ProphetKV (arXiv 2602.02579) and
the query pass of QCFuse (arXiv 2606.05875, over the full context rather than its anchors).

Cost: |question| tokens through every layer plus one explicit softmax of |question| × L per probed layer,
small next to the r·L context tokens the plan then recomputes.
"""

from __future__ import annotations

import torch

from chunkcache.engine.executor import PrefillResult, partial_prefill
from chunkcache.engine.prompt import Layout
from chunkcache.engine.workspace import Workspace
from chunkcache.kv.record import ChunkRecord
from chunkcache.models.base import CausalLM, Placement
from chunkcache.strategies.layouts import PlacedPlan
from chunkcache.strategies.base import Plan


class QuestionAttention:
    """Executor observer: attention of the question rows to each key position, averaged over heads and
    rows and over the probed layers. ``last_row``: only the prompt's last token — the one whose output is
    the first answer token — instead of every question row. Keys where ``hidden`` is set are left out."""

    def __init__(self, layout: Layout, layers: list[int], last_row: bool = False,
                 hidden: torch.Tensor | None = None) -> None:
        self.layout = layout
        self.layers = set(layers)
        self.first_row = layout.length - 1 if last_row else layout.question.start
        self.hidden = hidden
        self._sum: torch.Tensor | None = None  # on the model's device: no host sync per layer

    def observe(self, model: CausalLM, layer: int, q_rot: torch.Tensor, k_rot: torch.Tensor,
                positions: torch.Tensor, pos_host: torch.Tensor) -> None:
        if layer not in self.layers:
            return
        # The rows at or after ``first_row`` are a suffix of the sorted positions: found on the host, so the
        # host never waits here for the device to finish (a device-side nonzero would, at every probed layer).
        start = int(torch.searchsorted(pos_host, self.first_row))
        if self.hidden is not None and self.hidden.device != k_rot.device:
            self.hidden = self.hidden.to(k_rot.device)  # once, not at every probed layer
        probs = model.attention_probs(layer, q_rot[:, start:], k_rot, positions[start:], self.hidden)  # [H, q, L]
        layer_scores = probs.mean(dim=(0, 1)) / len(self.layers)
        self._sum = layer_scores if self._sum is None else self._sum + layer_scores

    @property
    def scores(self) -> torch.Tensor:
        """[L] on the host (one device-to-host copy, after the last layer)."""
        return torch.zeros(self.layout.length) if self._sum is None else self._sum.float().cpu()


def probe_question(model: CausalLM, ids: torch.Tensor, layout: Layout, prefix: ChunkRecord | None,
                   records: list[ChunkRecord | None], layers: list[int],
                   last_row: bool = False, workspace: Workspace | None = None) -> tuple[torch.Tensor, PrefillResult]:
    """(scores, result): per prompt position [L], the question's mean attention at ``layers`` over the
    reused context (``QuestionAttention``), and the probe's own prefill (its cost per layer).

    Chunks without a record (None) have no K/V to read yet. Computing them here would double their cost
    (the plan computes them in full anyway), so the probe leaves them out: the question rows do not see
    them (a ``Placement`` attention graph in which nothing attends to them), and only the question is
    computed. Their scores are 0; the strategy ranks only reused tokens. ``workspace``: the request's placed
    records (engine/workspace.py), which the plan's prefill then reuses."""
    missing = torch.zeros(layout.length, dtype=torch.bool)
    for span, rec in zip(layout.chunks, records):
        if rec is None:
            missing[span.start:span.end] = True
    obs = QuestionAttention(layout, layers, last_row, missing if bool(missing.any()) else None)
    plan = Plan(layout.question.range())
    if obs.hidden is not None:
        groups = missing.long()  # 1: a chunk without a record; 0: everything the probe may read
        sees = torch.tensor([[True, False], [True, True]])
        plan = PlacedPlan(layout.question.range(), Placement(torch.arange(layout.length), groups, sees))
    result = partial_prefill(model, ids, layout, prefix, records, plan, stats=obs, workspace=workspace)
    return obs.scores, result
