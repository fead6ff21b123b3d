"""``chunkcache bench workload``: how much a chunk cache saves under a Zipf reuse trace, per eviction policy
and capacity, next to exact prefix caching; optionally replayed through the real engine for TTFT.

    chunkcache bench workload [--queries 1000] [-k 5] [--zipf 1.0] [--repeat 0.2] [--policies lru,lfu,value]
                              [--capacities 5%,10%,20%,40%] [--bytes-per-token 131072] [--recompute 0.15]
                              [--stack device=2GB,host=8GB,disk=64GB] [--engine N] --json OUT [--plot OUT.png]

The corpus is the MuSiQue passages pooled (``--dataset`` another file in that format), tokenized by the
model's tokenizer. The trace (``workload.chunk_trace``) draws k chunks per query with Zipf(s) popularity and
re-asks earlier chunk sets in shuffled orders; every query has its own question. The policy sweep replays it
through the tiers' own eviction code (``cache_sim.py``) with records of ``--bytes-per-token`` (default:
Llama-3-8B in bf16, 128 KiB a token); capacities are bytes or percentages of the bytes of every chunk the
trace touches. ``--engine N`` replays the first N queries through the real engine (the model on ``--device``, or with
``--model-shape llama3-8b`` a random-weight model of that shape for GPU timing; a host tier of the first
capacity scaled to the model's own record size; the policies in turn), timing each prefill with the default
strategy and with ``full``, for TTFT and the gain over the trace.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

from chunkcache.bench.cache_sim import ORACLE, POPULARITY_ORACLE, REFERENCES, prefix_cache_recomputed, replay_tiers
from chunkcache.bench.environment import hardware
from chunkcache.bench.report import publish
from chunkcache.bench.workload import chunk_trace, pooled_passages
from chunkcache.store.eviction import DEFAULT_RECOMPUTE, POLICIES
from chunkcache.store.settings import parse_bytes

LLAMA3_8B_BYTES_PER_TOKEN = 32 * 8 * 128 * 2 * 2  # layers x KV heads x head dim x (K, V) x bf16


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", type=Path, default=None, help="MuSiQue-format JSON (default the shared musique_dev)")
    p.add_argument("--model", default="default", help="tokenizer (and --engine model): packaged name or HF dir")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("-k", type=int, default=5, help="chunks per query (default 5)")
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf parameter s of chunk popularity (default 1.0)")
    p.add_argument("--repeat", type=float, default=0.2, help="share of queries re-asking an earlier chunk set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policies", default=",".join(POLICIES),
                   help=f"eviction policies to compare ({', '.join(POLICIES)}); references that read the whole trace "
                        f"first: '{ORACLE}' (Belady's offline optimum), '{POPULARITY_ORACLE}' (keeps the chunks "
                        "the trace requests most: the ceiling of online policies)")
    p.add_argument("--capacities", default="2.5%,5%,10%,20%,40%,100%",
                   help="cache sizes: bytes (4GB) or %% of the bytes of every chunk the trace touches")
    p.add_argument("--bytes-per-token", type=int, default=LLAMA3_8B_BYTES_PER_TOKEN)
    p.add_argument("--recompute", type=float, default=DEFAULT_RECOMPUTE,
                   help="fraction of a reused chunk's tokens the repair recomputes (default 0.15)")
    p.add_argument("--stack", default=None, help="named tier capacities, fastest first (device=2GB,host=8GB,...)")
    p.add_argument("--window", type=int, default=100, help="queries per window of the over-the-trace view")
    p.add_argument("--engine", type=int, default=0, metavar="N", help="also replay N queries through the engine")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model-shape", default=None, choices=["llama3-8b"],
                   help="replay on a random-weight model of this shape with a word tokenizer (GPU timing)")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--plot", type=Path, default=None)


def _capacity(spec: str, working_set: int) -> int:
    spec = spec.strip()
    if spec.endswith("%"):
        return int(float(spec[:-1]) / 100 * working_set)
    return parse_bytes(spec)


def _windows(values: list[float], size: int) -> list[float]:
    return [round(statistics.fmean(values[i:i + size]), 4) for i in range(0, len(values), size)]


def simulate(args: argparse.Namespace, chunk_lens: list[int], question_lens: list[int], queries: list[list[int]],
             prompts: list[list[int]]) -> dict:
    """The policy x capacity sweep, the optional named stack, and the prefix-caching baseline."""
    touched = sorted({c for q in queries for c in q})
    working_set = sum(chunk_lens[c] for c in touched) * args.bytes_per_token
    capacities = [_capacity(c, working_set) for c in args.capacities.split(",")]
    policies = [p.strip() for p in args.policies.split(",")]
    prefix = prefix_cache_recomputed(prompts)
    no_cache = sum(len(p) for p in prompts)
    sweep = []
    for cap in capacities:
        for policy in policies:
            r = replay_tiers(queries, chunk_lens, question_lens, [cap], policy, args.bytes_per_token, args.recompute)
            sweep.append({**r.to_dict(), "capacity_bytes": cap, "capacity_share": round(cap / working_set, 4),
                          "hit_rate_windows": _windows(r.hit_per_query, args.window)})
    stack = []
    if args.stack:
        named = [part.split("=", 1) for part in args.stack.split(",")]
        for policy in (p for p in policies if p not in REFERENCES):
            r = replay_tiers(queries, chunk_lens, question_lens, [parse_bytes(v) for _, v in named], policy,
                             args.bytes_per_token, args.recompute, names=[n for n, _ in named])
            stack.append(r.to_dict())
    return {"working_set_bytes": working_set, "distinct_chunks": len(touched), "no_cache_tokens": no_cache,
            "prefix_cache_recomputed_tokens": sum(prefix), "sweep": sweep, "stack": stack}


def engine_replay(args: argparse.Namespace, passages: list[str], queries: list[list[int]],
                  questions: list[str], capacity_share: float, working_tokens: int) -> dict:
    """TTFT of the default strategy and of ``full`` over the first ``args.engine`` queries, per policy."""
    from tqdm import tqdm

    from chunkcache.bench.inprocess_replay import load_lm
    from chunkcache.engine.reuse import ReuseEngine
    from chunkcache.store import MemoryTier
    from chunkcache.strategies import DEFAULT_STRATEGY, make_strategy

    model, tok = load_lm(args.model, args.model_shape, args.device)
    probe = ReuseEngine(model, tok)
    per_token = probe.precompute(probe.template.encode_chunk(passages[0])).nbytes // len(
        probe.template.encode_chunk(passages[0]))
    capacity = int(capacity_share * working_tokens * per_token)
    full, reuse = make_strategy("full"), make_strategy(DEFAULT_STRATEGY)
    chunks = {}
    out = {"strategy": DEFAULT_STRATEGY, "capacity_bytes": capacity, "record_bytes_per_token": per_token,
           "queries": min(args.engine, len(queries)), "policies": {}}
    for policy in [p.strip() for p in args.policies.split(",") if p.strip() not in REFERENCES]:
        engine = ReuseEngine(model, tok, store=MemoryTier(capacity, policy))
        rows = []
        for q, chosen in enumerate(tqdm(queries[:args.engine], desc=f"engine replay ({policy})", unit="query")):
            ids = [chunks.setdefault(c, engine.template.encode_chunk(passages[c])) for c in chosen]
            question = engine.template.encode_question(questions[q])
            t0 = time.perf_counter()
            engine.prefill(ids, question, full)
            t1 = time.perf_counter()
            pre = engine.prefill(ids, question, reuse)
            t2 = time.perf_counter()
            rows.append({"full_ms": (t1 - t0) * 1e3, "reuse_ms": (t2 - t1) * 1e3,
                         "hit": pre.stats.chunks_hit / len(chosen), "recompute": pre.stats.recompute_fraction,
                         **{f"{k}_ms": v for k, v in pre.stats.timings_ms.items()}})
        reuse_ms = [r["reuse_ms"] for r in rows]
        full_ms = [r["full_ms"] for r in rows]
        out["policies"][policy] = {
            "ttft_p50_ms": round(statistics.median(reuse_ms), 1),
            "ttft_p95_ms": round(statistics.quantiles(reuse_ms, n=20)[-1], 1) if len(rows) >= 20 else None,
            "full_p50_ms": round(statistics.median(full_ms), 1),
            "hit_rate": round(statistics.fmean(r["hit"] for r in rows), 4),
            "mean_ms": {k: round(statistics.fmean(r[k] for r in rows), 1)
                        for k in rows[0] if k.endswith("_ms")},  # where a reuse request's time goes
            "gain_windows": [round(sum(full_ms[i:i + args.window]) / sum(reuse_ms[i:i + args.window]), 3)
                             for i in range(0, len(rows), args.window)],
            "hit_rate_windows": _windows([r["hit"] for r in rows], args.window),
            "store": engine.store.stats()}
    return out


def run(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    from chunkcache.bench.datasets import load_json, shared_data_dir
    from chunkcache.engine.prompt import PromptTemplate
    from chunkcache.models.loader import resolve_model_dir

    passages = pooled_passages(args.dataset)
    queries = chunk_trace(len(passages), args.queries, args.k, args.zipf, args.repeat, args.seed)
    examples = load_json(args.dataset or shared_data_dir() / "musique_dev.json")
    if args.model_shape:  # the random-weight model's word tokenizer (its vocabulary is Llama-3's)
        from chunkcache.bench.word_tokenizer import WordTokenizer

        tokenizer = WordTokenizer(128256)
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(args.model), local_files_only=True)
    template = PromptTemplate(tokenizer)
    chunk_ids = [template.encode_chunk(p) for p in passages]
    questions = [f"{examples[q % len(examples)].question} (query {q})" for q in range(len(queries))]
    question_ids = [template.encode_question(text) for text in questions]
    prompts = [template.assemble([chunk_ids[c] for c in chosen], question_ids[q])[0].tolist()
               for q, chosen in enumerate(queries)]
    chunk_lens = [len(c) for c in chunk_ids]
    result = {"command": "chunkcache bench workload", "date": datetime.date.today().isoformat(),
              "hardware": hardware(args.device), "trace": {"queries": len(queries), "k": args.k, "zipf": args.zipf,
                                                "repeat": args.repeat, "seed": args.seed, "pool": len(passages)},
              "bytes_per_token": args.bytes_per_token, "recompute": args.recompute,
              **simulate(args, chunk_lens, [len(q) for q in question_ids], queries, prompts)}
    if args.engine:
        touched = sum(chunk_lens[c] for c in {c for q in queries for c in q})
        result["engine"] = engine_replay(args, passages, queries, questions,
                                         result["sweep"][0]["capacity_share"], touched)
    return result


def table(result: dict) -> str:
    lines = [f"trace: {result['trace']['queries']} queries, k={result['trace']['k']}, zipf s={result['trace']['zipf']}, "
             f"{result['distinct_chunks']} distinct chunks, working set {result['working_set_bytes'] / 1e9:.1f} GB",
             f"tokens computed: no cache {result['no_cache_tokens']:,}; exact prefix caching (unbounded) "
             f"{result['prefix_cache_recomputed_tokens']:,}",
             "", "| capacity | policy | hit rate | recomputed tokens | vs LRU | vs prefix caching |", "|---|---|---|---|---|---|"]
    lru = {r["capacity_bytes"]: r["recomputed_tokens"] for r in result["sweep"] if r["policy"] == "lru"}
    for r in result["sweep"]:
        base = lru.get(r["capacity_bytes"])
        vs_lru = f"{base / r['recomputed_tokens']:.2f}× fewer" if base else "—"
        vs_prefix = f"{result['prefix_cache_recomputed_tokens'] / r['recomputed_tokens']:.2f}× fewer"
        lines.append(f"| {r['capacity_bytes'] / 1e9:.1f} GB ({100 * r['capacity_share']:.0f}%) | {r['policy']} | "
                     f"{r['hit_rate']:.3f} | {r['recomputed_tokens']:,} | {vs_lru} | {vs_prefix} |")
    for r in result.get("stack", []):
        per = ", ".join(f"{t['name']} {t['hits']} hits" for t in r["tiers"])
        lines.append(f"stack, {r['policy']}: hit rate {r['hit_rate']:.3f}; {per}")
    if "engine" in result:
        e = result["engine"]
        lines += ["", f"engine replay, {e['queries']} queries, {e['strategy']}, host tier {e['capacity_bytes'] / 1e6:.0f} MB:"]
        for policy, p in e["policies"].items():
            lines.append(f"  {policy}: TTFT p50 {p['ttft_p50_ms']} ms, p95 {p['ttft_p95_ms']} ms (full p50 "
                         f"{p['full_p50_ms']} ms), hit rate {p['hit_rate']:.3f}; gain per window {p['gain_windows']}")
            lines.append(f"  {policy}: mean ms {p['mean_ms']}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    for policy in dict.fromkeys(r["policy"] for r in result["sweep"]):
        rows = [r for r in result["sweep"] if r["policy"] == policy]
        x = [100 * r["capacity_share"] for r in rows]
        ax1.plot(x, [r["hit_rate"] for r in rows], marker="o", label=policy)
        ax2.plot(x, [r["recomputed_tokens"] for r in rows], marker="o", label=policy)
        last = rows[-1]["hit_rate_windows"]
        ax3.plot(range(len(last)), last, marker=".", label=f"{policy} ({100 * rows[-1]['capacity_share']:.0f}%)")
    ax2.axhline(result["prefix_cache_recomputed_tokens"], color="grey", linestyle="--", label="exact prefix caching")
    ax1.set(xlabel="capacity (% of working set)", ylabel="chunk hit rate")
    ax2.set(xlabel="capacity (% of working set)", ylabel="tokens recomputed")
    ax3.set(xlabel="window of queries", ylabel="hit rate in window")
    for ax in (ax1, ax2, ax3):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def command(args: argparse.Namespace) -> int:
    if args.queries < 1 or args.k < 1 or not 0 <= args.recompute <= 1:
        raise ValueError("--queries and -k must be >= 1 and --recompute in [0, 1]")
    for policy in args.policies.split(","):
        if policy.strip() not in (*POLICIES, *REFERENCES):
            raise ValueError(f"unknown eviction policy {policy!r}; choose from {', '.join((*POLICIES, *REFERENCES))}")
    result = run(args)
    publish(result, table(result), args.json, args.plot, plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m chunkcache.bench.cache_bench``: the same as ``chunkcache bench workload``, without the
    quality benchmark's imports (for a GPU machine with only the engine's dependencies)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(p)
    return command(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
