"""Does ``relevance``'s BM25 rank the answer's passage first, with and without the vocabulary-rank prior?

A tokenizer-only diagnostic (no model pass). For each question of ``needle`` and ``musique`` whose answer
string occurs in a stale passage (the first passage is exact in place, so ``needle`` skips it), rank the
passages by BM25 of the question's token ids, once with the prior w(t) = ln(2 + id) that
``strategies/relevance.py`` uses and once without, and count where the best-ranked answer passage lands.
It also checks the prior's assumption for each packaged tokenizer: that ids run in order of frequency, as the
Spearman correlation between a token's id and its frequency rank over every passage of both sets.

    .venv/bin/python scripts/relevance_ranking.py --models qwen2.5-coder-1.5b,smollm2-135m-instruct,gemma3-270m
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from transformers import AutoTokenizer

from chunkcache.bench.datasets import Example, load_json, needle, shared_data_dir
from chunkcache.models.loader import resolve_model_dir
from chunkcache.strategies.relevance import bm25


def answer_ranks(tok, examples: list[Example], first: int) -> dict[bool, list[int]]:
    """Rank (0 = first) of the best-ranked passage holding the answer, among passages ``first`` on, with the
    prior (key True) and without (False)."""
    ranks: dict[bool, list[int]] = {True: [], False: []}
    for ex in examples:
        docs = [tok(p, add_special_tokens=False)["input_ids"] for p in ex.passages]
        gold = [i for i, p in enumerate(ex.passages)
                if i >= first and any(a.lower() in p.lower() for a in ex.answers)]
        if not gold:
            continue
        question = tok(ex.question, add_special_tokens=False)["input_ids"]
        for prior, out in ranks.items():
            s = bm25(question, docs, prior)
            order = sorted(range(first, len(docs)), key=lambda i: (-s[i], i))
            out.append(min(order.index(g) for g in gold))
    return ranks


def id_frequency_spearman(tok, texts: list[str]) -> float:
    """Spearman correlation between token id and frequency rank (1 = most frequent) over ``texts``."""
    counts = Counter(t for text in texts for t in tok(text, add_special_tokens=False)["input_ids"])
    tokens = sorted(counts, key=lambda t: (-counts[t], t))
    by_id = {t: r for r, t in enumerate(sorted(tokens))}
    n = len(tokens)
    d2 = sum((r - by_id[t]) ** 2 for r, t in enumerate(tokens))
    return 1 - 6 * d2 / (n * (n * n - 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="qwen2.5-coder-1.5b")
    p.add_argument("--json")
    args = p.parse_args()
    sets = {"needle": (needle(), 1), "musique": (load_json(shared_data_dir() / "musique_dev.json"), 0)}
    texts = [t for exs, _ in sets.values() for ex in exs for t in ex.passages]
    rows = []
    for model in args.models.split(","):
        tok = AutoTokenizer.from_pretrained(resolve_model_dir(model))
        row = {"model": model, "id_frequency_spearman": round(id_frequency_spearman(tok, texts), 3)}
        for name, (examples, first) in sets.items():
            for prior, ranks in answer_ranks(tok, examples, first).items():
                key = f"{name}_{'with' if prior else 'without'}_prior"
                row[key] = {"n": len(ranks), "first": sum(r == 0 for r in ranks), "top2": sum(r <= 1 for r in ranks)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
