"""``chunkcache bench``: the benchmark's command-line contract.

    chunkcache bench --dataset PATH_OR_NAME --strategies full,prefix,naive,epic,cacheblend,cachecraft
                     --limit N --max-new-tokens T --json OUT.json [--plot OUT.png] [--model PATH]
                     [--device cpu|cuda] [--dtype float32|bfloat16] [--sweep] [--time-limit S]
    chunkcache bench serve [--url URL | --in-process] --strategies full,prefix,relevance --json OUT.json ...
    chunkcache bench workload [--queries N] [--zipf S] [--policies lru,lfu,value] --json OUT.json ...
    chunkcache bench select [--queries N] [--zipf S] [--budgets 100,200,...] --json OUT.json ...
    chunkcache bench merge PART.json PART.json ... --strategies full,... --json OUT.json

The first form judges quality and prefill cost per strategy; ``bench serve`` (``chunkcache.bench.serve``)
measures the serving engine's throughput and latency under a request trace; ``bench workload``
(``chunkcache.bench.cache_bench``) the cache tiers and eviction policies under a chunk-reuse trace; ``bench
select`` (``chunkcache.bench.select_bench``) cache-aware chunk selection under a cost budget against top-k;
``bench merge`` (``chunkcache.bench.merge``) joins a quality run made in parts with ``--skip``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import torch

from chunkcache.bench.datasets import load_dataset
from chunkcache.bench.environment import hardware, split_specs
from chunkcache.bench.report import plot, table, write_json
from chunkcache.bench.runner import expand, run

DEFAULT_STRATEGIES = "full,prefix,naive,epic,cacheblend,cachecraft,focus,relevance,ape"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The quality benchmark's flags, and the ``serve`` sub-mode with its own. ``--dataset`` and ``--json``
    are required without a sub-mode; ``main`` checks that, since argparse cannot require them only then."""
    from chunkcache.bench import cache_bench, merge, select_bench, serve

    modes = p.add_subparsers(dest="bench_mode", metavar="{serve,workload,select,merge}")
    serve.add_arguments(modes.add_parser("serve", help="serving throughput and latency under a RAG request trace"))
    cache_bench.add_arguments(modes.add_parser("workload", help="cache tiers and eviction policies under a Zipf "
                                                               "chunk-reuse trace, against exact prefix caching"))
    select_bench.add_arguments(modes.add_parser("select", help="cache-aware chunk selection under a prefill-cost "
                                                               "budget against plain top-k (Zipf questions)"))
    merge.add_arguments(modes.add_parser("merge", help="join a quality run made in parts (--skip) into one result"))
    p.add_argument("--dataset", default=None,
                   help="(required) musique, needle, multihop, linked (multihop with the links between its pages, "
                        "for the graph strategy), callgraph (code QA through a call), or a JSON file in the "
                        "musique format")
    p.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                   help="comma-separated specs: name or name:param=value (e.g. cacheblend:ratio=0.3)")
    p.add_argument("--limit", type=int, default=None, help="use the first N examples (after --skip)")
    p.add_argument("--skip", type=int, default=0, metavar="N",
                   help="leave out the first N examples: a long set run in parts, joined by `bench merge`")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--json", type=Path, default=None, help="(required) where to write the results")
    p.add_argument("--plot", type=Path, default=None, help="fidelity-vs-recompute plot (PNG)")
    p.add_argument("--model", default="default", help="packaged model name or HF model directory")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype (default: float32 on cpu, bfloat16 on cuda)")
    p.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="start no new example after S seconds; the JSON then reports the examples completed")
    p.add_argument("--sweep", action="store_true",
                   help="also sweep k (epic), ratio (cacheblend, focus, relevance) and alpha (cachecraft)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="keep chunk records here between runs (default: in memory only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from chunkcache.engine.reuse import ReuseEngine
    from chunkcache.models.loader import load_model
    from chunkcache.store.disk import DiskTier
    from chunkcache.store.memory import MemoryTier
    from chunkcache.store.tiered import TieredStore
    from chunkcache.strategies import make_strategy

    if args.bench_mode == "workload":
        from chunkcache.bench.cache_bench import command as workload_command

        return workload_command(args)
    if args.bench_mode == "select":
        from chunkcache.bench.select_bench import command as select_command

        return select_command(args)
    if args.bench_mode == "merge":
        from chunkcache.bench.merge import command as merge_command

        return merge_command(args)
    if args.bench_mode == "serve":
        from chunkcache.bench.serve import command as serve_command

        return serve_command(args)
    if args.dataset is None or args.json is None:
        raise ValueError("chunkcache bench needs --dataset and --json (or the serve sub-mode)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    if args.limit is not None and args.limit < 1:
        raise SystemExit("error: --limit must be at least 1")
    if args.skip < 0:
        raise SystemExit("error: --skip must not be negative")
    specs = expand(split_specs(args.strategies), args.sweep)
    for s in specs:
        make_strategy(s)  # fail before loading anything
    name, examples = load_dataset(args.dataset)
    total = len(examples)
    examples = examples[args.skip:]
    examples = examples[: args.limit] if args.limit else examples
    if not examples:
        raise SystemExit(f"error: dataset {args.dataset} has no examples" +
                         (f" after the first {args.skip} (it has {total})" if args.skip else ""))
    model, tok = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype) if args.dtype else None)
    engine = ReuseEngine(model, tok)
    if args.cache_dir:
        engine.store = TieredStore([MemoryTier(4 << 30), DiskTier(args.cache_dir / engine.fingerprint,
                                                                 engine.fingerprint)])
    t0 = time.perf_counter()
    results = run(engine, examples, specs, args.max_new_tokens, progress=not args.quiet, time_limit_s=args.time_limit)
    done = len(results["full"]["examples"])
    if done < len(examples):
        print(f"time limit reached: {done} of {len(examples)} examples completed")
    print(table(results))
    payload = {
        "model": str(args.model), "dataset": name, "skip": args.skip, "n": done, "n_requested": len(examples),
        "strategies": results,
        "settings": {"max_new_tokens": args.max_new_tokens, "device": args.device,
                     "dtype": str(model.dtype).removeprefix("torch."),
                     "machine": f"{platform.node()} {platform.machine()} {torch.get_num_threads()} threads",
                     "hardware": hardware(args.device),
                     "date": datetime.date.today().isoformat(), "seconds": round(time.perf_counter() - t0, 1),
                     "strategy_seconds": {s: round(m["seconds"], 2) for s, m in results.items()}},
    }
    write_json(args.json, payload)
    if args.plot:
        plot(results, args.plot, f"{name} (n={done}), {args.model}")
    return 0
