"""Run reuse strategies over a QA dataset and score each against ``full`` (DESIGN section 6).

Per example: passages become chunks (tokenized alone) whose isolated records are precomputed into the
engine's store; ``full`` gives the reference first-token distribution and greedy answer; every other
strategy reuses the records under its plan (``graph`` also its graph variants, computed once before timing
like the isolated records, when the example has edges; what that one-time computation recomputed is
``setup_recompute_fraction``) and is scored for fidelity to ``full`` (first-token agreement
and KL, ROUGE-L and exact match of the greedy answer), task quality (token F1 and answer accuracy against the
gold answers) and cost (recompute fraction, TTFT, prefill FLOPs, seconds of prefill and decode).

Answer-token fidelity: the first generated token is often boilerplate ("The"), so full's greedy answer is
also teacher-forced into every strategy's prefill (``engine.decode.teacher_force``). ``answer_token_kl`` and
``answer_token_agreement`` compare the distributions at full's first answer token (``metrics.answer_position``:
where a gold answer starts in full's answer, else the first non-boilerplate token; examples without one are
left out and counted in ``answer_token_examples``); ``answer_kl_mean`` averages the KL over all forced
positions of each example, then over examples.

Paired differences: per strategy, the mean of (strategy − full) per example for F1 and accuracy, with a 95%
Student-t interval on those paired differences (``metrics.paired_difference``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from chunkcache.bench.datasets import Example
from chunkcache.bench.floor import params_per_layer
from chunkcache.bench.metrics import (accuracy, answer_position, best_f1, first_token_kl, paired_difference,
                                      prefill_flops, rouge_l, token_kls)
from chunkcache.engine.decode import teacher_force
from chunkcache.engine.reuse import ReuseEngine
from chunkcache.strategies import make_strategy

# Parameter grids beside each family's default (epic k=16, cacheblend, focus and relevance ratio=0.15,
# cachecraft alpha=0.3).
SWEEPS = {
    "epic": [f"epic:k={k}" for k in (4, 64)],
    "cacheblend": [f"cacheblend:ratio={r}" for r in (0.05, 0.3, 0.5)],
    "cachecraft": [f"cachecraft:alpha={a}" for a in (0.1, 0.2, 0.5, 0.8)],
    "focus": [f"focus:ratio={r}" for r in (0.05, 0.1, 0.2, 0.3)],
    "relevance": [f"relevance:ratio={r}" for r in (0.3, 0.5)],
}
METRICS = ["f1", "accuracy", "first_token_agreement", "first_token_kl", "answer_token_agreement", "answer_token_kl",
           "answer_kl_mean", "rougeL_vs_full", "exact_match_vs_full", "recompute_fraction", "prefill_flops",
           "setup_recompute_fraction"]
PAIRED = ["f1", "accuracy"]  # reported as mean paired difference vs full with a 95% interval


@dataclass
class Rows:
    """Per-example values of one strategy, in example order (answer-token metrics only where defined)."""

    per_example: list[dict[str, float]] = field(default_factory=list)  # every value of each example
    ttft: list[float] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def start(self) -> None:
        """Begin the next example's record."""
        self.per_example.append({})

    def add(self, **kw: float) -> None:
        self.per_example[-1].update((k, float(v)) for k, v in kw.items())

    def column(self, metric: str) -> list[float]:
        """``metric``'s values over the examples that have it, in example order."""
        return [e[metric] for e in self.per_example if metric in e]

    def summary(self, full: Rows) -> dict[str, float | list[float] | None]:
        """Means, TTFT mean/median, seconds, and the paired differences against ``full``."""
        out: dict[str, float | list[float] | None] = {k: statistics.fmean(v) for k in METRICS
                                                      if (v := self.column(k))}
        out["answer_token_examples"] = len(self.column("answer_token_kl"))
        if self.ttft:
            out["ttft_ms_mean"] = statistics.fmean(self.ttft)
            out["ttft_ms_p50"] = statistics.median(self.ttft)
        out["seconds"] = self.seconds
        # per example, in dataset order: which questions a strategy misses, and whether they are full's misses
        out["examples"] = [{"answer": a, "ttft_ms": t, **values}
                           for a, t, values in zip(self.answers, self.ttft, self.per_example)]
        for k in PAIRED:
            if values := self.column(k):
                mean, ci = paired_difference(values, full.column(k))
                out[f"{k}_diff_vs_full"] = mean
                out[f"{k}_diff_ci95"] = list(ci) if ci else None
        return out


@dataclass
class Reference:
    """What ``full`` leaves for scoring the other strategies on one example."""

    logits: torch.Tensor  # first-token logits [vocab]
    answer: str
    tokens: list[int]  # greedy answer tokens, forced into every strategy's prefill
    forced: torch.Tensor  # full's own teacher-forced logits [len(tokens), vocab]
    pos: int | None  # first answer token (metrics.answer_position)


def expand(specs: list[str], sweep: bool) -> list[str]:
    """Strategy specs to run, ``full`` first; with ``sweep`` each family's parameter grid is added."""
    out = ["full"] + [s for s in specs if s != "full"]
    if sweep:
        for s in list(out):
            out += [x for x in SWEEPS.get(s, []) if x not in out]
    return out


def fit_passages(engine: ReuseEngine, ex: Example, max_new_tokens: int) -> tuple[list[list[int]], list[int]]:
    """Chunk token lists and question ids; whole passages are dropped from the end until the prompt and
    the answer fit the model's window — a chunk is never cut."""
    q = engine.template.encode_question(ex.question)
    budget = engine.model.shape.max_positions - len(engine.template.prefix_ids) - len(q) - max_new_tokens
    chunks: list[list[int]] = []
    for text in ex.passages:
        _, ids = engine.encode_chunk(text)
        if sum(map(len, chunks)) + len(ids) > budget:
            break
        chunks.append(ids)
    return chunks, q


def token_pieces(tokenizer, tokens: list[int]) -> list[str]:
    """The text each token adds to the decoded answer (so the pieces join to the decoded text)."""
    pieces, prev = [], ""
    for i in range(len(tokens)):
        text = tokenizer.decode(tokens[: i + 1], skip_special_tokens=True)
        pieces.append(text[len(prev):])
        prev = text
    return pieces


def run(engine: ReuseEngine, examples: list[Example], specs: list[str], max_new_tokens: int = 32,
        progress: bool = True, time_limit_s: float | None = None) -> dict[str, dict[str, float | list[float] | None]]:
    """Summary metrics per strategy spec (``full`` included, scored against itself; see module docstring).

    ``time_limit_s``: start no new example once this many seconds have passed (the first always runs); every strategy is then scored
    on the same completed examples (their count is ``len(result["full"]["examples"])``), so a long run on a
    slow machine still ends with a consistent, paired result instead of nothing."""
    if not specs or specs[0] != "full":
        raise ValueError("the strategy specs must start with full (the reference; see expand)")
    strategies = {s: make_strategy(s) for s in specs}
    rows = {s: Rows() for s in specs}
    ppl = params_per_layer(engine.model)
    vocab = engine.model.config.vocab_size
    bar = tqdm(total=len(examples) * len(specs), desc="bench", unit="run", disable=not progress)
    start = time.perf_counter()
    for ex in examples:
        chunks, q = fit_passages(engine, ex, max_new_tokens)
        for ids in chunks:
            cid = engine.chunk_id(ids)
            if not engine.store.variants(cid):
                engine.precompute(ids, cid)
        engine.candidates([engine.chunk_id(c) for c in chunks])  # warm the fast tier before timing
        edges = [(s, t) for s, t in ex.edges if s < len(chunks) and t < len(chunks)]
        ref: Reference | None = None
        for spec, strat in strategies.items():
            rows[spec].start()
            if strat.name == "graph" and edges:  # its graph variants, like isolated records, exist before timing
                setup = engine.prefill(chunks, q, strat, edges=edges)
                rows[spec].add(setup_recompute_fraction=setup.stats.recompute_fraction)
            t0 = time.perf_counter()
            pre = engine.prefill(chunks, q, strat, reserve=max_new_tokens, edges=edges)
            gen = engine.generate(pre, max_new_tokens)
            first = next(gen, None)
            ttft = (time.perf_counter() - t0) * 1e3
            tokens = ([first] if first is not None else []) + list(gen)
            rows[spec].seconds += time.perf_counter() - t0
            answer = engine.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            logits = pre.result.logits
            forced = teacher_force(engine.model, pre.result, ref.tokens if ref else tokens)
            if ref is None:  # full runs first: its answer is the reference every strategy is forced along
                ref = Reference(logits, answer, tokens, forced,
                                answer_position(token_pieces(engine.tokenizer, tokens), ex.answers))
            kls = token_kls(ref.forced, forced)
            if ref.tokens:
                rows[spec].add(answer_kl_mean=kls.mean())
            if ref.pos is not None:
                rows[spec].add(answer_token_kl=kls[ref.pos],
                               answer_token_agreement=int(torch.argmax(forced[ref.pos])) == ref.tokens[ref.pos])
            rows[spec].ttft.append(ttft)
            rows[spec].answers.append(answer)
            rows[spec].add(
                f1=best_f1(answer, ex.answers),
                accuracy=accuracy(answer, ex.answers, ex.answer_pattern),
                first_token_agreement=int(torch.argmax(logits)) == int(torch.argmax(ref.logits)),
                first_token_kl=first_token_kl(ref.logits, logits),
                rougeL_vs_full=rouge_l(answer, ref.answer),
                exact_match_vs_full=answer == ref.answer,
                recompute_fraction=pre.stats.recompute_fraction,
                prefill_flops=prefill_flops(pre.stats.computed_per_layer, pre.layout.length,
                                            engine.model.shape, ppl, vocab),
            )
            bar.update(1)
        if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
            break
    bar.close()
    return {s: r.summary(rows["full"]) for s, r in rows.items()}
