"""``chunkcache bench serve``: throughput and latency of the serving engine under a RAG request trace.

    chunkcache bench serve --url http://127.0.0.1:8000 --json serve.json           # a server already running
    chunkcache bench serve --strategies full,prefix,relevance --json serve.json --plot serve.png
    python -m chunkcache.bench.serve --in-process --model-shape llama3-8b --device cuda \\
        --strategies full,prefix,relevance --requests 200 --clients 16 --json serve-gpu.json

The trace (``workload.py``) is Zipf-popular MuSiQue chunk sets with shuffled passage orders. Three modes:

- ``--url``: replay against a running OpenAI-compatible server (one run).
- default: start ``chunkcache serve`` on a free loopback port once per strategy of ``--strategies`` (fresh
  temporary store each), plus one run of the default strategy with ``--max-running 1`` (one request at a
  time: what continuous batching buys); ``--no-serial`` leaves that run out.
- ``--in-process``: the same runs, calling ``ServingEngine.submit`` from client threads, no HTTP; with
  ``--model-shape llama3-8b`` around a random-weight model (see ``inprocess_replay.py`` for its token ids).

Per run: requests/s, output tokens/s, TTFT p50/p95/p99, end-to-end p50/p95, reused fraction of prompt
tokens, errors. A table is printed, ``--json`` gets everything (with per-request rows), ``--plot`` a PNG.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from chunkcache.bench.report import write_json
from chunkcache.bench.serve_report import plot, request_rows, summarize, table
from chunkcache.bench.workload import TraceRequest, make_trace, musique_sets

DEFAULT_STRATEGIES = "full,prefix,relevance"


@dataclass(frozen=True)
class RunSpec:
    """One run: a label, the server's strategy, and its --max-running (None: the server default)."""

    name: str
    strategy: str
    max_running: int | None


def plan_runs(strategies: list[str], max_running: int | None, serial: bool, default: str) -> list[RunSpec]:
    """A run per strategy, then (``serial``) the default strategy again, one request at a time."""
    runs = [RunSpec(s, s, max_running) for s in strategies]
    if serial:
        runs.append(RunSpec(f"{default} max-running=1", default, 1))
    return runs


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The serving benchmark's flags (shared by ``chunkcache bench serve`` and ``python -m``)."""
    where = p.add_argument_group("where the server is")
    where.add_argument("--url", default=None, help="base URL of a running OpenAI-compatible server (one run)")
    where.add_argument("--in-process", action="store_true", help="drive ServingEngine.submit directly, no HTTP")
    where.add_argument("--model", default="default", help="packaged model name or HF model directory; with "
                       "--url, the model name sent in requests")
    where.add_argument("--model-shape", default=None, choices=["llama3-8b"],
                       help="--in-process only: a random-weight model of this shape instead of --model")
    where.add_argument("--layers", type=int, default=None, help="--model-shape with fewer layers (quick checks)")
    where.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    where.add_argument("--strategies", default=DEFAULT_STRATEGIES, help="comma-separated strategy specs, one run each")
    where.add_argument("--serial", action=argparse.BooleanOptionalAction, default=True,
                       help="also run the default strategy with --max-running 1 (default: yes)")
    where.add_argument("--max-running", type=int, default=None, help="server --max-running for the batched runs")
    where.add_argument("--max-waiting", type=int, default=None, help="server --max-waiting")
    where.add_argument("--kv-bytes", type=int, default=None, help="server --kv-bytes (paged KV pool)")
    where.add_argument("--store-bytes", type=int, default=8 << 30,
                       help="--in-process: host-memory tier for chunk records (default 8 GiB; an 8B-shaped "
                            "model's 150-token passage takes 19 MB)")
    where.add_argument("--prompt-format", default="chat", choices=["chat", "rag"],
                       help="--in-process: chat-templated ids (as /v1/chat/completions) or a RagPrompt")
    where.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                       help="--in-process: replay decode steps from CUDA graphs (ServingConfig.cuda_graphs)")
    load = p.add_argument_group("the trace")
    load.add_argument("--dataset", type=Path, default=None, help="MuSiQue-format JSON (default: shared musique_dev)")
    load.add_argument("--requests", type=int, default=64, help="trace length (default 64)")
    load.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    load.add_argument("-k", type=int, default=4, help="passages per request (default 4)")
    load.add_argument("--zipf-s", type=float, default=1.1, help="Zipf parameter of chunk-set popularity (default 1.1)")
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request (default 32)")
    load.add_argument("--warmup", type=int, default=1, help="unrelated warm-up requests before each run")
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, required=True, help="where to write the results")
    out.add_argument("--plot", type=Path, default=None, help="throughput and TTFT p95 per run (PNG)")


def check_args(args: argparse.Namespace) -> None:
    """Every input check that needs no model, so bad flags fail at once."""
    for name in ("requests", "clients", "k", "max_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.url and args.in_process:
        raise ValueError("--url and --in-process exclude each other")
    if args.model_shape and not args.in_process:
        raise ValueError("--model-shape needs --in-process (a served model has a real tokenizer)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda but no CUDA device is available")


def workload_summary(trace: list[TraceRequest], args: argparse.Namespace) -> dict:
    """What the trace looks like: reuse structure and prompt sizes."""
    counts: dict[int, int] = {}
    for r in trace:
        counts[r.set_id] = counts.get(r.set_id, 0) + 1
    passages = {p for r in trace for p in r.passages}
    return {"requests": len(trace), "k": args.k, "zipf_s": args.zipf_s, "seed": args.seed,
            "dataset": str(args.dataset or "musique_dev"), "distinct_sets": len(counts),
            "top_set_requests": max(counts.values()), "distinct_passages": len(passages),
            "distinct_questions": len({(r.set_id, r.question) for r in trace}),
            "mean_prompt_chars": round(statistics.mean(len(r.content()) for r in trace), 1)}


def _run_http(args: argparse.Namespace, trace: list[TraceRequest], runs: list[RunSpec]) -> dict[str, tuple]:
    from chunkcache.bench.http_replay import replay_http
    from chunkcache.bench.server_process import running_server

    if args.url:
        return {"server": replay_http(args.url, args.model, trace, args.clients, args.max_tokens, args.warmup)}
    extra = [flag for name, value in (("--max-waiting", args.max_waiting), ("--kv-bytes", args.kv_bytes))
             if value is not None for flag in (name, str(value))]
    out = {}
    for run in runs:
        print(f"starting chunkcache serve --strategy {run.strategy}"
              + (f" --max-running {run.max_running}" if run.max_running else ""), file=sys.stderr, flush=True)
        with running_server(args.model, run.strategy, args.device, run.max_running, extra) as url:
            out[run.name] = replay_http(url, args.model, trace, args.clients, args.max_tokens, args.warmup)
    return out


def _run_in_process(args: argparse.Namespace, trace: list[TraceRequest], runs: list[RunSpec]) -> dict[str, tuple]:
    from chunkcache.bench.inprocess_replay import EngineSettings, build_engine, load_lm, replay_engine

    lm, tok = load_lm(args.model, args.model_shape, args.device, args.layers)
    out = {}
    for run in runs:
        print(f"in-process run {run.name}", file=sys.stderr, flush=True)
        engine = build_engine(lm, tok, EngineSettings(run.strategy, run.max_running, args.max_waiting, args.kv_bytes,
                                                    args.store_bytes, args.cuda_graphs))
        try:
            out[run.name] = replay_engine(engine, trace, args.clients, args.max_tokens, args.prompt_format,
                                          args.warmup)
        finally:
            engine.shutdown()
        del engine  # its KV pool, before the next run allocates one
        if args.device == "cuda":
            import torch

            torch.cuda.empty_cache()
    return out


def run(args: argparse.Namespace) -> dict:
    """Replay the trace in every run the flags ask for; print the table, write JSON (and plot); return it."""
    from chunkcache.bench.environment import hardware, split_specs
    from chunkcache.strategies import DEFAULT_STRATEGY, make_strategy

    check_args(args)
    strategies = split_specs(args.strategies)
    for s in strategies:
        make_strategy(s)  # a bad spec fails before anything starts
    trace = make_trace(musique_sets(args.k, args.dataset, args.seed), args.requests, args.zipf_s, args.seed)
    runs = plan_runs(strategies, args.max_running, args.serial and not args.url, DEFAULT_STRATEGY)
    t0 = time.perf_counter()
    measured = _run_in_process(args, trace, runs) if args.in_process else _run_http(args, trace, runs)
    specs = {r.name: r for r in runs}
    rows = {}
    for name, (results, wall) in measured.items():
        spec = specs.get(name)
        rows[name] = {**summarize(results, wall), "strategy": spec.strategy if spec else None,
                      "max_running": spec.max_running if spec else None, "per_request": request_rows(results)}
    mode = "in-process" if args.in_process else ("url" if args.url else "spawned-servers")
    model = f"{args.model_shape}-random" if args.model_shape else args.model
    title = (f"{mode}, {model}, {args.requests} requests, {args.clients} clients, k={args.k}, "
             f"zipf s={args.zipf_s}, {args.max_tokens} new tokens")
    print(title)
    print(table(rows))
    payload = {"mode": mode, "model": model, "url": args.url, "workload": workload_summary(trace, args),
               "settings": {"clients": args.clients, "max_tokens": args.max_tokens, "device": args.device,
                            "prompt_format": args.prompt_format if args.in_process else "chat",
                            "max_running": args.max_running, "max_waiting": args.max_waiting,
                            "kv_bytes": args.kv_bytes, "store_bytes": args.store_bytes, "layers": args.layers,
                            "cuda_graphs": args.cuda_graphs, "hardware": hardware(args.device),
                            "date": datetime.date.today().isoformat(),
                            "seconds": round(time.perf_counter() - t0, 1)},
               "runs": rows}
    write_json(args.json, payload)
    if args.plot:
        plot(rows, args.plot, title)
    return payload


def command(args: argparse.Namespace) -> int:
    """Run and return the exit status: 0, or 1 with a one-line error when the server under test failed
    (bad flags raise ``ValueError`` for the caller's status 2)."""
    from chunkcache.bench.server_process import ServerError

    try:
        run(args)
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m chunkcache.bench.serve``: the same flags as ``chunkcache bench serve``."""
    p = argparse.ArgumentParser(prog="python -m chunkcache.bench.serve", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return command(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
