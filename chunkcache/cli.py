"""``chunkcache`` command line: ingest, ask, cache stats|verify|clear, calibrate, bench, serve.

Every command goes through ``chunkcache.api.Engine`` (or the benchmark runner); bad input ends with a
one-line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _engine_args(p: argparse.ArgumentParser, strategy: bool = False) -> None:
    p.add_argument("--store", default=None, help="store directory (default $CHUNKCACHE_STORE or ./.chunkcache)")
    p.add_argument("--model", default="default", help="packaged model name or HF model directory")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    tiers = p.add_argument_group("cache tiers (override <store>/chunkcache.toml and CHUNKCACHE_* variables)")
    tiers.add_argument("--device-bytes", default=None, metavar="SIZE",
                       help="accelerator tier capacity, e.g. 8GiB (needs --device cuda; default 0: off)")
    tiers.add_argument("--host-bytes", default=None, metavar="SIZE", help="host-memory tier capacity (default 1GiB)")
    tiers.add_argument("--redis", dest="redis_url", default=None, metavar="URL",
                       help="shared Redis tier, e.g. redis://127.0.0.1:6379/0 (default: none)")
    tiers.add_argument("--eviction", default=None, choices=["lru", "lfu", "value"],
                       help="eviction policy of the memory tiers (default value)")
    if strategy:
        from chunkcache.strategies import DEFAULT_STRATEGY, STRATEGIES

        p.add_argument("--strategy", default=None,
                       help=f"one of {', '.join(STRATEGIES)} (name[:param=value,...]); default: the "
                            f"store's calibrated setting (chunkcache calibrate), else {DEFAULT_STRATEGY}")


def build_parser() -> argparse.ArgumentParser:
    from chunkcache.bench import command as bench
    from chunkcache.serve import server as serve_server

    p = argparse.ArgumentParser(prog="chunkcache", description="RAG that never prefills the same chunk twice.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = p.add_subparsers(dest="command", required=True)

    ing = sub.add_parser("ingest", help="chunk, embed, index and precompute caches for files and folders")
    ing.add_argument("paths", nargs="+", type=Path)
    _engine_args(ing)

    ask = sub.add_parser("ask", help="answer a question from the ingested documents")
    ask.add_argument("question")
    ask.add_argument("-k", type=int, default=5, help="chunks to retrieve (default 5)")
    ask.add_argument("--max-new-tokens", type=int, default=128)
    ask.add_argument("--json", action="store_true", help="print one JSON object (answer, citations, stats)")
    budget = ask.add_mutually_exclusive_group()
    budget.add_argument("--budget-tokens", type=int, default=None, metavar="N",
                        help="choose chunks among more candidates so that the prefill computes at most N "
                             "tokens (a cached chunk costs only what the strategy recomputes of it); "
                             "default: plain top-k")
    budget.add_argument("--budget-ms", type=float, default=None, metavar="MS",
                        help="the same budget in prefill milliseconds, from this engine's measured rate")
    ask.add_argument("--structure", default=None, choices=["sequential", "parallel", "graph"],
                     help="lay the chunks out as one sequence (default), in parallel (order-invariant, no "
                          "repair), or as a graph of their links and code definitions (a chunk reads the "
                          "chunks it links to or whose definitions it uses)")
    _engine_args(ask, strategy=True)

    cache = sub.add_parser("cache", help="inspect or maintain the chunk caches")
    cache.add_argument("action", choices=["stats", "verify", "clear", "pin", "unpin"])
    cache.add_argument("paths", nargs="*", type=Path,
                       help="pin/unpin: ingested documents whose chunk records the memory tiers always keep")
    _engine_args(cache)

    cal = sub.add_parser("calibrate", help="save the smallest strategy budget whose answers stay within a "
                                           "fidelity target of full prefill on this store")
    cal.add_argument("--target", type=float, default=0.95,
                     help="fidelity to reach: mean ROUGE-L vs full prefill's answers, in (0, 1] (default 0.95)")
    cal.add_argument("--strategy", default=None,
                     help="strategy to tune, name[:param=value,...] without its budget parameter "
                          "(default: the package default strategy)")
    cal.add_argument("--questions", type=Path, default=None,
                     help="file of questions, one per line (default: synthesized from the stored chunks)")
    cal.add_argument("-n", type=int, default=20, help="questions to use (default 20)")
    cal.add_argument("-k", type=int, default=5, help="chunks to retrieve per question, as ask (default 5)")
    cal.add_argument("--max-new-tokens", type=int, default=128, help="answer length compared (default 128)")
    cal.add_argument("--grid", default=None,
                     help="comma-separated budget values to try (default: per strategy, e.g. ratio 0.05..0.5)")
    _engine_args(cal)

    bench.add_arguments(sub.add_parser("bench", help="quality and speed of every reuse strategy"))

    srv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (chat, completions, RAG, documents)")
    serve_server.add_arguments(srv)
    _engine_args(srv, strategy=True)
    return p


def _engine(args: argparse.Namespace, **kw):
    from chunkcache.api import Engine

    return Engine(store=args.store, model=args.model, device=args.device, tiers=tier_flags(args), **kw)


def tier_flags(args: argparse.Namespace) -> dict:
    """The tier options given on the command line (store/settings.py applies them over file and env)."""
    return {name: getattr(args, name) for name in ("device_bytes", "host_bytes", "redis_url", "eviction")}


def _ingest(args: argparse.Namespace) -> int:
    from chunkcache.rag.readers import require_paths

    require_paths(args.paths)  # before the model loads
    with _engine(args) as eng:
        r = eng.ingest(args.paths, progress=True)
    print(f"files: {r.files_seen} seen, {r.files_added} added, {r.files_updated} updated, "
          f"{r.files_unchanged} unchanged, {r.files_removed} removed, {r.files_skipped} skipped; "
          f"chunks: {r.chunks_added} added, {r.chunks_removed} removed; {r.seconds:.1f} s")
    return 0


def _ask(args: argparse.Namespace) -> int:
    if not args.question.strip():
        raise ValueError("the question is empty")
    if args.k < 1:
        raise ValueError("-k must be at least 1")
    stream = None if args.json else (lambda s: print(s, end="", flush=True))
    with _engine(args, strategy=args.strategy, k=args.k, max_new_tokens=args.max_new_tokens) as eng:
        ans = eng.ask(args.question, on_text=stream, structure=args.structure, budget_tokens=args.budget_tokens,
                      budget_ms=args.budget_ms)
    if args.json:
        print(json.dumps(ans.to_dict(), indent=2))
        return 0
    s = ans.stats
    print("\n\nSources:")
    for i, c in enumerate(ans.citations, 1):
        print(f"  [{i}] {c}  (score {c.score:.2f})")
    t = s["timings_ms"]
    print(f"\nTTFT {s['ttft_ms']:.0f} ms | strategy {s['strategy_spec']} ({s['strategy_source']}) | "
          f"chunks {s['chunks_hit']} hit, {s['chunks_missed']} missed | tokens {s['tokens_reused']} reused, "
          f"{s['tokens_recomputed']} recomputed ({100 * s['recompute_fraction']:.1f}%)"
          + (f" | {s['edges']} edges" if s["edges"] else ""))
    if "selection" in s:
        sel = s["selection"]
        print(f"selection: {sel['chosen']} of {sel['candidates']} candidates ({sel['cached_chosen']} cached), "
              f"~{sel['estimated_tokens']:.0f} of {sel['budget_tokens']:.0f} tokens"
              + (" (over budget: the best chunk alone does not fit)" if sel["over_budget"] else ""))
    print("time: " + ", ".join(f"{k} {v:.0f} ms" for k, v in t.items()))
    return 0


def _cache(args: argparse.Namespace) -> int:
    with _engine(args) as eng:
        if args.action == "stats":
            s = eng.cache_stats()
            rate = "n/a" if s["hit_rate"] is None else f"{s['hit_rate']:.0%}"
            print(f"store {s['store']}: {s['records']} records of {s['chunks']} chunks, "
                  f"{s['bytes'] / 1e6:.1f} MB; lookups {s['hits']} hits, {s['misses']} misses "
                  f"(hit rate {rate}), {s['corrupt']} corrupt")
            for doc, d in s["documents"].items():
                print(f"  {doc}: {d['chunks']} chunks, {d['cached']} cached")
        elif args.action == "verify":
            v = eng.cache_verify()
            print(f"{v['records_ok']} records ok, {len(v['records_removed'])} bad removed")
            for path in v["records_removed"]:
                print(f"  removed {path}")
            for problem in v["index_problems"]:
                print(f"  index: {problem}")
            return 1 if v["index_problems"] else 0
        elif args.action in ("pin", "unpin"):
            if not args.paths:
                raise ValueError(f"cache {args.action} needs the path of at least one ingested document")
            for path in args.paths:
                try:
                    n = eng.pin_document(path, pin=args.action == "pin")
                except KeyError as e:
                    raise ValueError(f"{e.args[0]} (ingest it first)") from None
                print(f"{args.action}ned {path}: {n} chunks")
        else:
            if args.paths:
                raise ValueError(f"cache {args.action} takes no paths")
            print(f"removed {eng.cache_clear()} records")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from chunkcache.api import MANIFEST
    from chunkcache.calibrate import Point, candidates, check_settings, parse_grid, read_questions
    from chunkcache.strategies import DEFAULT_STRATEGY

    # every input check before the model loads
    check_settings(args.target, args.n, args.k, args.max_new_tokens)
    spec = args.strategy or DEFAULT_STRATEGY
    grid = parse_grid(args.grid) if args.grid is not None else None
    param, _ = candidates(spec, grid)
    if args.questions is not None:
        read_questions(args.questions, args.n)
    rows: list[Point] = []

    def row(p: Point) -> None:
        if not rows:
            print(f"{spec}: smallest {param} with fidelity >= {args.target} to full prefill "
                  f"(k={args.k}, {args.max_new_tokens} new tokens)")
            print(f"{param:>10}  {'fidelity':>8}  {'agreement':>9}  {'recompute':>9}")
        rows.append(p)
        mark = "  <- meets target" if p.fidelity >= args.target else ""
        print(f"{p.value:>10}  {p.fidelity:>8.3f}  {p.first_token_agreement:>9.2f}  "
              f"{100 * p.recompute_fraction:>8.1f}%{mark}", flush=True)

    with _engine(args, k=args.k, max_new_tokens=args.max_new_tokens) as eng:
        result = eng.calibrate(args.target, spec, args.questions, args.n, grid=grid, on_point=row)
    c, best = result.chosen, result.best
    if c is None:
        print(f"error: no {param} in the grid reaches fidelity {args.target} on {len(result.questions)} questions "
              f"(best {best.fidelity:.3f} at {best.spec}); nothing saved: try larger --grid values, a lower "
              "--target, or --strategy full", file=sys.stderr)
        return 1
    asked = "synthetic questions" if result.source == "synthetic" else f"questions from {result.source}"
    print(f"\nsaved {c.spec} (fidelity {c.fidelity:.3f}, recompute {100 * c.recompute_fraction:.1f}%, "
          f"{len(result.questions)} {asked}) in {eng.root / MANIFEST}; ask uses it unless --strategy is given")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from chunkcache.serve.server import serve

    return serve(args)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from chunkcache.models.base import UnsupportedModelError
    from chunkcache.store import StoreLockedError

    handlers = {"ingest": _ingest, "ask": _ask, "cache": _cache, "calibrate": _calibrate, "serve": _serve}
    try:
        if args.command == "bench":
            from chunkcache.bench.command import main as bench_main

            return bench_main(args)
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError, PermissionError, UnsupportedModelError, StoreLockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
