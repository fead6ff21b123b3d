"""Run reuse strategies over a QA dataset and score each against ``full`` (DESIGN section 6).

Per example: passages become chunks (tokenized alone) whose isolated records are precomputed into the
engine's store; ``full`` gives the reference first-token distribution and greedy answer; every other
strategy reuses the records under its plan and is scored for fidelity to ``full`` (first-token agreement
and KL, ROUGE-L and exact match of the greedy answer), task quality (token F1 and answer accuracy against the gold answers)
and cost (recompute fraction, TTFT, prefill FLOPs).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from chunkcache.bench.datasets import Example
from chunkcache.bench.metrics import best_f1, contains_answer, first_token_kl, prefill_flops, rouge_l
from chunkcache.engine.reuse import ReuseEngine
from chunkcache.strategies import make_strategy

# Parameter grids beside each family's default (epic k=16, cacheblend ratio=0.15, cachecraft alpha=0.3).
SWEEPS = {
    "epic": [f"epic:k={k}" for k in (4, 64)],
    "cacheblend": [f"cacheblend:ratio={r}" for r in (0.05, 0.3, 0.5)],
    "cachecraft": [f"cachecraft:alpha={a}" for a in (0.1, 0.2, 0.5, 0.8)],
}
METRICS = ["f1", "accuracy", "first_token_agreement", "first_token_kl", "rougeL_vs_full", "exact_match_vs_full",
           "recompute_fraction", "ttft_ms_mean", "ttft_ms_p50", "prefill_flops"]


@dataclass
class Rows:
    values: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    ttft: list[float] = field(default_factory=list)

    def add(self, **kw: float) -> None:
        for k, v in kw.items():
            self.values[k].append(float(v))

    def summary(self) -> dict[str, float]:
        out = {k: statistics.fmean(v) for k, v in self.values.items() if v}
        if self.ttft:
            out["ttft_ms_mean"] = statistics.fmean(self.ttft)
            out["ttft_ms_p50"] = statistics.median(self.ttft)
        return out


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


def _params_per_layer(engine: ReuseEngine) -> int:
    layer = engine.model.layers[0]
    return sum(p.numel() for p in layer.parameters())


def run(engine: ReuseEngine, examples: list[Example], specs: list[str], max_new_tokens: int = 32,
        progress: bool = True) -> dict[str, dict[str, float]]:
    """Summary metrics per strategy spec (``full`` included, scored against itself)."""
    strategies = {s: make_strategy(s) for s in specs}
    rows = {s: Rows() for s in specs}
    ppl = _params_per_layer(engine)
    vocab = engine.model.config.vocab_size
    bar = tqdm(total=len(examples) * len(specs), desc="bench", unit="run", disable=not progress)
    for ex in examples:
        chunks, q = fit_passages(engine, ex, max_new_tokens)
        for ids in chunks:
            cid = engine.chunk_id(ids)
            if not engine.store.variants(cid):
                engine.precompute(ids, cid)
        engine.candidates([engine.chunk_id(c) for c in chunks])  # warm the fast tier before timing
        ref_logits, ref_answer = None, ""
        for spec, strat in strategies.items():
            t0 = time.perf_counter()
            pre = engine.prefill(chunks, q, strat, reserve=max_new_tokens)
            gen = engine.generate(pre, max_new_tokens)
            first = next(gen, None)
            ttft = (time.perf_counter() - t0) * 1e3
            tokens = ([first] if first is not None else []) + list(gen)
            answer = engine.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            logits = pre.result.logits
            if ref_logits is None:
                ref_logits, ref_answer = logits, answer
            rows[spec].ttft.append(ttft)
            rows[spec].add(
                f1=best_f1(answer, ex.answers),
                accuracy=contains_answer(answer, ex.answers),
                first_token_agreement=int(torch.argmax(logits)) == int(torch.argmax(ref_logits)),
                first_token_kl=first_token_kl(ref_logits, logits),
                rougeL_vs_full=rouge_l(answer, ref_answer),
                exact_match_vs_full=answer == ref_answer,
                recompute_fraction=pre.stats.recompute_fraction,
                prefill_flops=prefill_flops(pre.stats.computed_per_layer, pre.layout.length,
                                            engine.model.shape, ppl, vocab),
            )
            bar.update(1)
    bar.close()
    return {s: r.summary() for s, r in rows.items()}
