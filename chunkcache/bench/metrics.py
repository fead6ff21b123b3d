"""Quality and cost metrics of DESIGN section 6.

* token F1 with SQuAD's answer normalisation (lower case, no punctuation/articles/extra spaces), best over
  the gold answers, and accuracy: a normalised gold answer appears in the normalised prediction or, for an
  example with an answer pattern, the pattern's first match equals a normalised gold answer;
* ROUGE-L F-measure between two texts (the ``rouge-score`` package);
* KL(P_full ‖ P_strategy) between next-token distributions, and the answer-token position at which the
  runner compares them (the first content token of full's answer, not a boilerplate "The");
* paired differences against ``full`` with a 95% Student-t confidence interval;
* prefill FLOPs of a plan, counted from the computed positions per layer.
"""

from __future__ import annotations

import collections
import math
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


def extracted_answer(prediction: str, golds: list[str], pattern: str) -> float:
    """1.0 when the first match of ``pattern`` in the prediction (the whole match) equals a gold answer after
    normalisation; 0.0 when it differs or nothing matches."""
    m = re.search(pattern, prediction)
    if m is None:
        return 0.0
    got = normalize_answer(m.group(0))
    return float(any(got == normalize_answer(g) for g in golds))


def accuracy(prediction: str, golds: list[str], pattern: str | None) -> float:
    """Answer accuracy: by extraction when the example has an answer pattern, else gold-in-prediction."""
    return extracted_answer(prediction, golds, pattern) if pattern else contains_answer(prediction, golds)


# Words a fluent answer opens with before it says anything (checked after SQuAD normalisation, which already
# drops a/an/the): agreement there says little about the answer.
BOILERPLATE = frozenset({"a", "an", "the", "answer", "is", "are", "was", "were", "code", "of", "it", "its"})


def answer_position(pieces: list[str], golds: list[str]) -> int | None:
    """Index of the first answer token of a generated answer given as per-token text ``pieces``.

    The token where the earliest gold answer (case-insensitive, on word boundaries) starts in the joined
    text, if one occurs; else the first token whose normalised text is non-empty and not in BOILERPLATE;
    None when there is no such token."""
    text = "".join(pieces)
    matches = (re.search(rf"(?<!\w){re.escape(g.strip())}(?!\w)", text, re.IGNORECASE)
               for g in golds if g.strip())
    starts = [m.start() for m in matches if m]
    if starts:
        first, end = min(starts), 0
        for i, piece in enumerate(pieces):
            end += len(piece)
            if end > first:
                return i
    for i, piece in enumerate(pieces):
        word = normalize_answer(piece)
        if word and word not in BOILERPLATE:
            return i
    return None


def rouge_l(prediction: str, reference: str) -> float:
    if not prediction.strip() and not reference.strip():
        return 1.0
    return _SCORER.score(reference, prediction)["rougeL"].fmeasure


def first_token_kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """KL(P_ref ‖ P) in nats between the softmax distributions of two logit vectors."""
    return float(token_kls(ref_logits[None], logits[None])[0])


def token_kls(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(P_ref ‖ P) in nats per row of two [T, vocab] logit tensors."""
    lp_ref = torch.log_softmax(ref_logits.float().cpu(), -1)
    lp = torch.log_softmax(logits.float().cpu(), -1)
    return torch.sum(lp_ref.exp() * (lp_ref - lp), -1)


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` degrees of freedom (exact finite series, Abramowitz &
    Stegun 26.7.3–4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(3, df - 1, 2):  # 1 + (2/3)c² + (2·4)/(3·5)c⁴ + ...
            term *= (k - 1) / k * c2
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0
    for k in range(2, df, 2):  # 1 + (1/2)c² + (1·3)/(2·4)c⁴ + ...
        term *= (k - 1) / k * c2
        total += term
    return s * total


def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| < t) = ``level`` (e.g. 2.262 for level 0.95, df 9), by bisection."""
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < level else (lo, mid)
    return (lo + hi) / 2


def paired_difference(values: list[float], reference: list[float], level: float = 0.95
                      ) -> tuple[float, tuple[float, float] | None]:
    """Mean of ``values[i] - reference[i]`` and its Student-t confidence interval (mean ± t·sd/√n, sd with
    n−1); the interval is None for fewer than two pairs."""
    if len(values) != len(reference) or not values:
        raise ValueError("paired difference needs two equally long, non-empty lists")
    d = [a - b for a, b in zip(values, reference)]
    n, mean = len(d), math.fsum(d) / len(d)
    if n < 2:
        return mean, None
    half = t_quantile(level, n - 1) * math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1) / n)
    return mean, (mean - half, mean + half)


def prefill_flops(computed_per_layer: list[int], prompt_len: int, shape, params_per_layer: int,
                  vocab: int) -> float:
    """2·P per computed token per layer (projections and MLP) plus 4·H·D per query–key pair (scores and
    weighted values, each key up to the query's position approximated by the full prompt), plus one
    lm_head row."""
    total = 0.0
    for n in computed_per_layer:
        total += 2.0 * params_per_layer * n + 4.0 * shape.n_heads * shape.head_dim * n * prompt_len
    return total + 2.0 * shape.hidden * vocab
