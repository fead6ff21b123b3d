"""Where should a repair budget go, and can the question's attention find it? A diagnostic on the needle set.

For each question: (1) recompute exactly the passage that holds the answer, in full, over the others' reused
records, and check the answer (the ceiling of whole-chunk repair at about one passage of budget); (2) rank
the stale passages by the question probe's attention (``focus``'s signal: every layer or the deeper half,
every question row or the last, summed or max over a passage's tokens) and by word overlap with the question,
and record where the answer's passage lands. Prints one JSON line a question and a summary; writes the rows.

    .venv/bin/python scripts/needle_gold_oracle.py --model qwen2.5-coder-1.5b --limit 30 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import re
import time

import torch

from chunkcache.bench.datasets import needle
from chunkcache.bench.metrics import accuracy
from chunkcache.bench.runner import fit_passages
from chunkcache.engine.reuse import ReuseEngine
from chunkcache.models.loader import load_model
from chunkcache.strategies.base import Plan, Request, Strategy, stale_chunks

STOP = {"what", "which", "the", "code", "for", "of", "is", "a", "an", "number", "four", "digit", "given", "listed"}


class GoldPassage(Strategy):
    """Recompute the passage ``gold`` in full; on the way, rank the stale passages by the probe's attention."""

    name = "gold"

    def __init__(self, gold: int) -> None:
        self.gold, self.ranks = gold, {}

    def select(self, req: Request, records, must: torch.Tensor) -> Plan:
        chunks, n = req.layout.chunks, req.n_layers
        stale = stale_chunks(req, records)
        probes = {"all_rows": (list(range(n)), False), "last_row": (list(range(n)), True),
                  "last_row_deep_half": (list(range(n // 2, n)), True)}
        for name, (layers, last) in probes.items():
            s = req.probe(records, layers, last)
            for agg in ("sum", "max"):
                v = {i: float(getattr(s[chunks[i].range()], agg)()) for i in stale}
                self.ranks[f"{name}_{agg}"] = sorted(v, key=lambda i: (-v[i], i)).index(self.gold)
        return Plan(torch.cat([must, chunks[self.gold].range()]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b")
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    model, tok = load_model(args.model)
    engine = ReuseEngine(model, tok)
    rows, t0 = [], time.time()
    for e, ex in enumerate(needle()[:args.limit]):
        chunks, q = fit_passages(engine, ex, 8)
        for ids in chunks:
            engine.precompute(ids)
        gold = next(i for i, text in enumerate(ex.passages) if ex.answers[0] in text)
        words = {w for w in re.findall(r"[a-z]+", ex.question.lower()) if w not in STOP}
        overlap = {i: len(words & set(re.findall(r"[a-z]+", t.lower()))) for i, t in enumerate(ex.passages) if i}
        strategy = GoldPassage(gold)
        pre = engine.prefill(chunks, q, strategy, reserve=8)
        answer = tok.decode(list(engine.generate(pre, 8)), skip_special_tokens=True).strip()
        rows.append({"example": e, "gold": gold, "answer": answer,
                     "accuracy": accuracy(answer, ex.answers, ex.answer_pattern),
                     "recompute": pre.stats.recompute_fraction,
                     "word_overlap_rank": sorted(overlap, key=lambda i: (-overlap[i], i)).index(gold),
                     "probe_ranks": strategy.ranks})
        print(json.dumps(rows[-1]), f"{time.time() - t0:.0f} s", flush=True)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    n = len(rows)
    print(f"gold passage recomputed: accuracy {sum(r['accuracy'] for r in rows) / n:.2f}, "
          f"mean recompute {sum(r['recompute'] for r in rows) / n:.3f} (n={n})")
    for k in rows[0]["probe_ranks"]:
        print(f"probe {k}: answer's passage ranked first in {sum(r['probe_ranks'][k] == 0 for r in rows)}/{n}")
    print(f"word overlap: first in {sum(r['word_overlap_rank'] == 0 for r in rows)}/{n}")


if __name__ == "__main__":
    main()
