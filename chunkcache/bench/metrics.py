"""Quality and cost metrics of DESIGN section 6.

* token F1 with SQuAD's answer normalisation (lower case, no punctuation/articles/extra spaces), best over
  the gold answers, and accuracy: a normalised gold answer appears in the normalised prediction;
* ROUGE-L F-measure between two texts (the ``rouge-score`` package);
* first-token agreement and KL(P_full ‖ P_strategy) of the first generated token's distributions;
* prefill FLOPs of a plan, counted from the computed positions per layer.
"""

from __future__ import annotations

import collections
import re
import string

import torch
from rouge_score import rouge_scorer

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if not p or not g:
        return float(p == g)
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def best_f1(prediction: str, golds: list[str]) -> float:
    return max((f1(prediction, g) for g in golds), default=0.0)


def contains_answer(prediction: str, golds: list[str]) -> float:
    """1.0 when a normalised gold answer appears in the normalised prediction (answer recall, for models that
    answer in a full sentence)."""
    p = f" {normalize_answer(prediction)} "
    return float(any(f" {normalize_answer(g)} " in p for g in golds if normalize_answer(g)))


def rouge_l(prediction: str, reference: str) -> float:
    if not prediction.strip() and not reference.strip():
        return 1.0
    return _SCORER.score(reference, prediction)["rougeL"].fmeasure


def first_token_kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """KL(P_ref ‖ P) in nats between the softmax distributions of two logit vectors."""
    lp_ref = torch.log_softmax(ref_logits.float().cpu(), -1)
    lp = torch.log_softmax(logits.float().cpu(), -1)
    return float(torch.sum(lp_ref.exp() * (lp_ref - lp)))


def prefill_flops(computed_per_layer: list[int], prompt_len: int, shape, params_per_layer: int,
                  vocab: int) -> float:
    """2·P per computed token per layer (projections and MLP) plus 4·H·D per query–key pair (scores and
    weighted values, each key up to the query's position approximated by the full prompt), plus one
    lm_head row."""
    total = 0.0
    for n in computed_per_layer:
        total += 2.0 * params_per_layer * n + 4.0 * shape.n_heads * shape.head_dim * n * prompt_len
    return total + 2.0 * shape.hidden * vocab
