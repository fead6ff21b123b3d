"""``chunkcache bench select``: cache-aware, cost-constrained chunk selection (rag/select.py) against plain
top-k, under a Zipf question workload with a warm chunk cache.

    chunkcache bench select [--queries 1000] [--zipf 1.0] [--capacity 10%] [--policy value]
                            [--topk 1,2,3,4,5,6,8] [--budgets 100,150,...] --json OUT [--plot OUT.png]

The corpus is the MuSiQue passages pooled; the questions are MuSiQue's, each asked with Zipf(s) popularity
(a seeded ranking), so popular questions come back and their chunks are warm. A question's gold passages
are those of its own example that contain one of its answers. Retrieval is the packaged embedder's cosine
similarity over the whole pool; each query sees its top ``--candidates`` chunks. A chunk cache of
``--capacity`` tokens (a share of the pool's tokens) with the tiers' own eviction code (``Residency``)
holds the records; a chunk in it costs ``--recompute`` of its tokens to reuse, one outside it all of them
(then it is cached). The cost of a query is the tokens its prefill computes, question included: TTFT is
linear in it (docs/benchmarks.md, time to first token). Every method replays the trace with its own cache.

Reported per method (top-k for each k; the selector for each budget): mean recall of the gold passages,
mean and p95 computed tokens, chunks per query, and the share of chosen chunks that were cached; then, per
top-k, the selector's recall at no more mean cost, and its cost at no less recall.
"""

from __future__ import annotations

import argparse
import datetime
import random
import statistics
from pathlib import Path

import numpy as np

from chunkcache.bench.environment import hardware
from chunkcache.bench.report import publish
from chunkcache.bench.workload import pooled_passages, zipf_weights
from chunkcache.rag.select import RELEVANCE_FLOOR, Candidate, select_chunks
from chunkcache.store.eviction import DEFAULT_RECOMPUTE, POLICIES, EntryInfo, Residency, make_policy


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", type=Path, default=None, help="MuSiQue-format JSON (default the shared musique_dev)")
    p.add_argument("--model", default="default", help="tokenizer: packaged model name or HF dir")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf parameter s of question popularity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--candidates", type=int, default=16, help="retrieved candidates per query")
    p.add_argument("--capacity", default="10%", help="cache size: tokens, or %% of the pool's tokens")
    p.add_argument("--policy", default="value", choices=list(POLICIES))
    p.add_argument("--recompute", type=float, default=DEFAULT_RECOMPUTE,
                   help="fraction of a cached chunk the reuse strategy recomputes (default 0.15)")
    p.add_argument("--topk", default="1,2,3,4,5,6,8")
    p.add_argument("--budgets", default="250,500,750,1000,1500,2000,2500,3000,4000",
                   help="selector budgets in computed tokens per query")
    p.add_argument("--floor", type=float, default=RELEVANCE_FLOOR,
                   help="the selector's relevance floor τ, relative to the best candidate")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--plot", type=Path, default=None)


def gold_passages(examples, pool: list[str]) -> list[set[int]]:
    """Per example, the pool indices of its passages that contain one of its answers (case-insensitive)."""
    where = {p: i for i, p in enumerate(pool)}
    return [{where[p] for p in ex.passages if p in where and any(a.lower() in p.lower() for a in ex.answers if a)}
            for ex in examples]


def replay(draws: list[int], ranked: np.ndarray, rel: np.ndarray, vectors: np.ndarray, lens: list[int],
           q_lens: list[int], gold: list[set[int]], capacity: int, policy: str, r: float,
           floor: float, topk: int | None = None, budget: float | None = None) -> dict:
    """One method over the trace: plain ``topk``, or the selector with ``budget`` tokens."""
    cache = Residency(capacity, make_policy(policy))
    recalls, costs, sizes, cached = [], [], [], 0
    for q in draws:
        idx = [int(i) for i in ranked[q]]
        hot = [(str(i), "isolated") in cache for i in idx]
        cands = [Candidate(float(rel[q, i]), lens[i], h, r, vectors[i]) for i, h in zip(idx, hot)]
        chosen = list(range(topk)) if topk is not None else select_chunks(cands, budget, q_lens[q], floor=floor)
        costs.append(q_lens[q] + sum(cands[c].cost for c in chosen))
        recalls.append(len({idx[c] for c in chosen} & gold[q]) / len(gold[q]))
        sizes.append(len(chosen))
        for c in chosen:
            key = (str(idx[c]), "isolated")
            if hot[c]:
                cache.access(key)
                cached += 1
            else:
                cache.admit(key, EntryInfo(lens[idx[c]], lens[idx[c]]))
    return {"method": f"top-{topk}" if topk is not None else f"budget-{budget:g}", "topk": topk, "budget": budget,
            "recall": round(statistics.fmean(recalls), 4), "mean_tokens": round(statistics.fmean(costs), 1),
            "p95_tokens": round(float(np.percentile(costs, 95)), 1), "chunks": round(statistics.fmean(sizes), 2),
            "cached_share": round(cached / max(1, sum(sizes)), 4)}


def compare(rows: list[dict]) -> list[dict]:
    """Per top-k row: the selector's best recall at no more mean cost, and its least cost at no less recall."""
    sel = [r for r in rows if r["budget"] is not None]
    out = []
    for t in (r for r in rows if r["topk"] is not None):
        cheaper = [s for s in sel if s["mean_tokens"] <= t["mean_tokens"]]
        better = [s for s in sel if s["recall"] >= t["recall"]]
        a = max(cheaper, key=lambda s: s["recall"], default=None)
        b = min(better, key=lambda s: s["mean_tokens"], default=None)
        out.append({"topk": t["topk"], "topk_recall": t["recall"], "topk_tokens": t["mean_tokens"],
                    "recall_at_equal_cost": a and a["recall"], "at_budget": a and a["budget"],
                    "tokens_at_equal_recall": b and b["mean_tokens"], "speedup_at_equal_recall":
                    b and round(t["mean_tokens"] / b["mean_tokens"], 3)})
    return out


def run(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    from chunkcache.bench.datasets import load_json, shared_data_dir
    from chunkcache.engine.prompt import PromptTemplate
    from chunkcache.models.loader import resolve_model_dir
    from chunkcache.rag import Embedder

    pool = pooled_passages(args.dataset)
    examples = load_json(args.dataset or shared_data_dir() / "musique_dev.json")
    gold_all = gold_passages(examples, pool)
    keep = [i for i, g in enumerate(gold_all) if g]
    examples, gold = [examples[i] for i in keep], [gold_all[i] for i in keep]
    template = PromptTemplate(AutoTokenizer.from_pretrained(resolve_model_dir(args.model), local_files_only=True))
    lens = [len(template.encode_chunk(p)) for p in pool]
    q_lens = [len(template.encode_question(ex.question)) for ex in examples]
    embedder = Embedder()
    vectors = embedder.embed(pool)
    rel = embedder.embed([ex.question for ex in examples]) @ vectors.T
    ranked = np.argsort(-rel, axis=1, kind="stable")[:, :args.candidates]
    rng = random.Random(args.seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    draws = rng.choices(order, weights=zipf_weights(len(examples), args.zipf), k=args.queries)
    total = sum(lens)
    cap = args.capacity.strip()
    capacity = int(total * float(cap[:-1]) / 100) if cap.endswith("%") else int(cap)
    common = (draws, ranked, rel, vectors, lens, q_lens, gold, capacity, args.policy, args.recompute,
              args.floor)
    rows = [replay(*common, topk=int(k)) for k in args.topk.split(",")]
    rows += [replay(*common, budget=float(b)) for b in args.budgets.split(",")]
    retrievable = statistics.fmean(len(set(ranked[q].tolist()) & gold[q]) / len(gold[q]) for q in draws)
    return {"command": "chunkcache bench select", "date": datetime.date.today().isoformat(),
            "hardware": hardware("cpu"),
            "workload": {"queries": args.queries, "questions": len(examples), "zipf": args.zipf, "seed": args.seed,
                         "pool": len(pool), "pool_tokens": total, "capacity_tokens": capacity,
                         "policy": args.policy, "recompute": args.recompute, "candidates": args.candidates,
                         "floor": args.floor,
                         "gold_in_candidates": round(retrievable, 4)},
            "rows": rows, "comparison": compare(rows)}


def table(result: dict) -> str:
    w = result["workload"]
    lines = [f"{w['queries']} queries over {w['questions']} questions (Zipf s={w['zipf']}), pool {w['pool']} passages "
             f"({w['pool_tokens']:,} tokens), cache {w['capacity_tokens']:,} tokens ({w['policy']}), reuse recomputes "
             f"{w['recompute']:.0%}; gold reachable in the top {w['candidates']}: {w['gold_in_candidates']:.3f}",
             "", "| method | gold recall | mean tokens | p95 tokens | chunks | cached |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['recall']:.3f} | {r['mean_tokens']:.0f} | {r['p95_tokens']:.0f} | "
                     f"{r['chunks']:.2f} | {r['cached_share']:.2f} |")
    lines += ["", "| top-k | its recall | its tokens | selector recall, no more tokens | selector tokens, "
                  "no less recall |", "|---|---|---|---|---|"]
    for c in result["comparison"]:
        a = f"{c['recall_at_equal_cost']:.3f} (budget {c['at_budget']:g})" if c["recall_at_equal_cost"] is not None else "—"
        b = f"{c['tokens_at_equal_recall']:.0f} ({c['speedup_at_equal_recall']:.2f}× fewer)" \
            if c["tokens_at_equal_recall"] is not None else "—"
        lines.append(f"| {c['topk']} | {c['topk_recall']:.3f} | {c['topk_tokens']:.0f} | {a} | {b} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, label in (("topk", "plain top-k"), ("budget", "cache-aware selection")):
        rows = [r for r in result["rows"] if r[kind] is not None]
        ax.plot([r["mean_tokens"] for r in rows], [r["recall"] for r in rows], marker="o", label=label)
    ax.set(xlabel="computed prefill tokens per query (mean)", ylabel="gold passage recall")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def command(args: argparse.Namespace) -> int:
    if args.queries < 1 or args.candidates < 1 or not 0 <= args.recompute <= 1:
        raise ValueError("--queries and --candidates must be >= 1 and --recompute in [0, 1]")
    result = run(args)
    publish(result, table(result), args.json, args.plot, plot)
    return 0
