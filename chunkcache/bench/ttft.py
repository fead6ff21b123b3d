"""GPU time-to-first-token of every reuse strategy on a Llama-3-8B-shaped model with random weights.

    python -m chunkcache.bench.ttft --contexts 8192,16384,32768,65536 --json ttft.json

Random weights are fine for timing (DESIGN section 7): the work per token does not depend on the values.
Contexts are made of 512-token chunks after a 32-token template prefix, then a 64-token question. Every
chunk's isolated record is precomputed; TTFT = choose (with the question probe for ``focus``) + partial
prefill + first-token pick, synchronised, median of ``--repeats`` runs after warm-up. Records sit in GPU
memory (the fastest tier) for the main columns; ``--host`` repeats strategies with records in pinned host
memory, copies included (streamed in layer group by layer group behind compute, engine/workspace.py), and
reports how much of the copy time that hides. ``hf_sdpa`` is plain ``transformers`` with SDPA attention over the same prompt,
the bar our ``full`` must not be slower than. Each strategy's time is also shown over its compute floor
(bench/floor.py, from this device's measured matrix rate and bandwidth), and one context gets a decode
column: tokens/s of concurrent sequences decoding after the last strategy's prefill.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from chunkcache.bench.environment import split_specs
from chunkcache.bench.floor import Peaks, floor_ms, measure_peaks, prefill_work
from chunkcache.engine.kv_blocks import KVBlocks
from chunkcache.engine.prompt import Layout, Span, template_key
from chunkcache.engine.reuse import decide_and_prefill, for_prefill
from chunkcache.engine.runner import DecodeRunner
from chunkcache.engine.sequence import GenParams, Sequence
from chunkcache.engine.serving import ServingConfig
from chunkcache.kv.build import isolated_record, template_record
from chunkcache.kv.record import host_copy
from chunkcache.models.loader import wrap
from chunkcache.strategies import DEFAULT_STRATEGY, make_strategy

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                 rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192})
STRATEGIES = ["full", "prefix", "naive", "epic", "cacheblend", "cachecraft", DEFAULT_STRATEGY]


@dataclass
class SyntheticTemplate:
    """A fixed template prefix of token ids (what PromptTemplate provides from a tokenizer)."""

    prefix_ids: list[int]
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = template_key(self.prefix_ids)


def build_model(layers: int | None, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**LLAMA3_8B, **({"num_hidden_layers": layers} if layers else {})})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            hf = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    for p in hf.parameters():  # small random weights keep bf16 activations finite over 32 layers
        p.data.normal_(0, 0.02)
    return wrap(hf.eval())


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time (ms) of ``repeats`` synchronised calls after one warm-up, and the last result (the
    previous result is dropped before each call, so two requests' buffers never coexist)."""
    out = fn()
    _sync()
    times = []
    for _ in range(repeats):
        out = None
        _sync()
        t0 = time.perf_counter()
        out = fn()
        _sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def decode_rate(model, result, token: int, n_seqs: int, steps: int, graphs: bool = True) -> float:
    """Decode tokens/s of ``n_seqs`` concurrent sequences that each start from ``result``'s prompt (the
    serving engine's paged KV and batched decode step, engine/runner.py, replayed from CUDA graphs or not),
    over ``steps`` steps."""
    length = result.length
    bs = ServingConfig.block_size
    per_seq = -(-(length + steps + 1) // bs)
    blocks = KVBlocks(model.shape, n_seqs * per_seq + 1, bs, model.device, model.dtype)  # +1: padding rows
    runner = DecodeRunner(model, blocks, graphs)
    seqs = []
    for _ in range(n_seqs):
        seq = Sequence([], length, GenParams(max_tokens=steps + 1), None, set())
        seq.blocks = blocks.allocate(per_seq)
        blocks.write_prompt(seq.blocks, result.keys, result.values, length)
        seq.kv_len, seq.next_position, seq.pending = length, result.next_position, token
        seqs.append(seq)

    def step() -> None:
        for seq, tok in zip(seqs, runner.step(seqs)):
            seq.kv_len, seq.pending = seq.kv_len + 1, tok

    step()
    _sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    return n_seqs * steps / (time.perf_counter() - t0)


def tier_rows(tiers: list[str], records: list, prefill, spec: str, repeats: int, redis_url: str | None) -> dict:
    """TTFT of ``spec`` with every record read from the disk tier (page cache dropped before each read) or
    the Redis tier first: lookup, read, checksum verification, the copy to the device, then the prefill."""
    import os
    import tempfile

    from chunkcache.store import DiskTier, RedisTier

    out = {}
    fp = records[0].fingerprint
    with tempfile.TemporaryDirectory(prefix="ttft-disk-") as tmp:
        stores = {"disk": lambda: DiskTier(Path(tmp), fp), "redis": lambda: RedisTier(redis_url, fp, timeout_s=30)}
        for name in tiers:
            if name == "redis" and not redis_url:
                raise SystemExit("error: --tiers redis needs --redis-url")
            tier = stores[name]()
            for r in records:
                tier.put(r.to("cpu", torch.bfloat16))

            def read_all(tier=tier, name=name) -> list:
                if name == "disk":  # a cold read: drop the files from the page cache first
                    for path in Path(tmp).rglob("*.safetensors"):
                        fd = os.open(path, os.O_RDONLY)
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        os.close(fd)
                return tier.get_many([(r.chunk_id, "isolated") for r in records])

            out[f"{spec}_{name}"], _ = timed(lambda: prefill(spec, read_all()), repeats)
            out[f"{name}_read_ms"], _ = timed(read_all, repeats)
            tier.clear()
            tier.close()
    return out


def run_context(model, context: int, chunk: int, repeats: int, strategies: list[str], host: list[str],
                peaks: Peaks, decode: tuple[int, int] | None, tiers: list[str] = (),
                redis_url: str | None = None) -> dict:
    dev = model.device
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(context)
    template = SyntheticTemplate(torch.randint(0, vocab, (32,), generator=g).tolist())
    prefix = template_record(model, template, torch.bfloat16).to(dev, torch.bfloat16)
    n_chunks = context // chunk
    chunks = [torch.randint(0, vocab, (chunk,), generator=g).tolist() for _ in range(n_chunks)]
    question = torch.randint(0, vocab, (64,), generator=g).tolist()
    ids_list, spans = list(template.prefix_ids), []
    for c in chunks:
        spans.append(Span(len(ids_list), len(ids_list) + len(c)))
        ids_list += c
    layout = Layout(Span(0, 32), spans, Span(len(ids_list), len(ids_list) + 64), [f"c{i}" for i in range(n_chunks)])
    ids = torch.tensor(ids_list + question, device=dev)
    records = [isolated_record(model, template, prefix, c, f"c{i}", torch.bfloat16).to(dev, torch.bfloat16)
               for i, c in enumerate(chunks)]
    on_host = [r.to("cpu", torch.bfloat16) for r in records] if host else []
    for r in on_host:  # one pinned buffer per record's K and V, as the memory tier keeps them
        r.keys, r.values = host_copy(r.keys, pin=True), host_copy(r.values, pin=True)

    def prefill(spec: str, recs):
        strat = make_strategy(spec)
        loaded = [[for_prefill(r, dev, torch.bfloat16)] for r in recs]
        _, _, res, probe = decide_and_prefill(model, ids, layout, prefix, loaded, strat)
        return int(torch.argmax(res.logits)), res, probe

    row: dict[str, float] = {}
    with torch.inference_mode():
        row["hf_sdpa"], ref = timed(lambda: model.hf(ids[None], use_cache=False, logits_to_keep=1).logits[0, -1],
                                    repeats)
        for spec in strategies:
            row[spec], (tok, res, probe) = timed(lambda: prefill(spec, records), repeats)
            n = len(res.context_computed_per_layer)
            row[f"{spec}_recompute"] = sum(res.context_computed_per_layer) / (n * layout.context_tokens)
            passes = [res] if probe is None else [probe, res]
            reused = layout.length - min(res.computed_per_layer)
            flops, nbytes = prefill_work(model, passes, reused)
            row[f"{spec}_floor"] = floor_ms(flops, nbytes, peaks)
            row[f"{spec}_tflop"] = flops / 1e12
            if spec == "full":
                row["full_vs_hf_rel_err"] = float((res.logits - ref.float()).norm() / ref.float().norm())
            if decode is not None and spec == strategies[-1]:
                last = (res, tok)
            del res, probe
        for spec in host:
            row[f"{spec}_host"], _ = timed(lambda: prefill(spec, on_host), repeats)
        if host:  # the copy alone, and how much of it the streaming hides behind compute
            row["host_copy_ms"], _ = timed(lambda: [r.to(dev, torch.bfloat16, non_blocking=True) for r in on_host],
                                           repeats)
            for spec in (h for h in host if h in row):
                row[f"{spec}_hidden"] = 1 - (row[f"{spec}_host"] - row[spec]) / row["host_copy_ms"]
        if tiers:
            row.update(tier_rows(tiers, records, prefill, DEFAULT_STRATEGY, repeats, redis_url))
        if decode is not None:
            row["decode_tok_s"] = decode_rate(model, *last, *decode)
            row["decode_eager_tok_s"] = decode_rate(model, *last, *decode, graphs=False)
    row["tokens"] = int(ids.numel())
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--contexts", default="8192,16384,32768,65536")
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layers", type=int, default=None, help="fewer layers for a quick check")
    p.add_argument("--strategies", default=",".join(STRATEGIES),
                   help="strategy specs to time (full first), e.g. add cachecraft:alpha=0.15")
    p.add_argument("--host", default=f"cacheblend,{DEFAULT_STRATEGY}",
                   help="strategies to time again with records in pinned host memory, copies included")
    p.add_argument("--decode", default="8192:32:32",
                   help="CONTEXT:SEQUENCES:STEPS of the decode column (after the last strategy's prefill); "
                        "'none' to skip")
    p.add_argument("--tiers", default="", help="disk,redis: also time the default strategy with records read from "
                                              "these tiers first, at --tier-context")
    p.add_argument("--tier-context", type=int, default=16384)
    p.add_argument("--redis-url", default=None, help="a running Redis for --tiers redis")
    p.add_argument("--json", default="ttft.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA device")
    specs = ["full"] + [x for x in split_specs(args.strategies) if x != "full"]
    host = split_specs(args.host)
    decode = None if args.decode == "none" else tuple(int(x) for x in args.decode.split(":"))
    model = build_model(args.layers, "cuda")
    peaks = measure_peaks(model.device)
    print(f"measured peaks: {peaks.flops / 1e12:.0f} TFLOP/s bf16, {peaks.bandwidth / 1e12:.2f} TB/s", flush=True)
    rows = {}
    for ctx in (int(c) for c in args.contexts.split(",")):
        rows[ctx] = run_context(model, ctx, args.chunk, args.repeats, specs, host, peaks,
                                decode[1:] if decode and decode[0] == ctx else None,
                                split_specs(args.tiers) if ctx == args.tier_context else [], args.redis_url)
        gc.collect()
        torch.cuda.empty_cache()
        print(f"{ctx}: " + ", ".join(f"{k} {v:.1f}" for k, v in rows[ctx].items() if k in ["hf_sdpa", *specs]),
              flush=True)
    print_table(rows, specs, host)
    payload = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": "llama3-8b-shape-random",
               "chunk": args.chunk, "date": time.strftime("%Y-%m-%d"), "peak_tflops": peaks.flops / 1e12,
               "peak_tb_s": peaks.bandwidth / 1e12, "decode": args.decode, "rows": rows}
    with open(args.json, "w") as f:
        json.dump(payload, f, indent=2)
    return 0


def print_table(rows: dict[int, dict], specs: list[str], host: list[str]) -> None:
    """TTFT per strategy, then each strategy's speed-up over ``full``, recompute and time over its floor."""
    cols = ["hf_sdpa"] + specs + [f"{h}_host" for h in host]
    print(f"| {'tokens':>6} | " + " | ".join(f"{c:>12}" for c in cols) + " |   (TTFT ms, median)")
    for r in rows.values():
        print(f"| {r['tokens']:>6} | " + " | ".join(f"{r[c]:>12.1f}" for c in cols) + " |")
    print("\n| tokens | strategy | recompute | speed-up vs full | floor ms | time / floor |")
    for r in rows.values():
        for spec in specs:
            print(f"| {r['tokens']} | {spec} | {r[spec + '_recompute']:.3f} | {r['full'] / r[spec]:.1f}x | "
                  f"{r[spec + '_floor']:.1f} | {r[spec] / r[spec + '_floor']:.2f} |")
    for r in rows.values():
        if "host_copy_ms" in r:
            print(f"| {r['tokens']} | host copy alone {r['host_copy_ms']:.1f} ms | " + " | ".join(
                f"{h}: host/device {r[h + '_host'] / r[h]:.3f}, copy hidden {100 * r[h + '_hidden']:.0f}%"
                for h in host if h + "_hidden" in r) + " |")
    for r in rows.values():
        for name in ("disk", "redis"):
            key = f"{DEFAULT_STRATEGY}_{name}"
            if key in r:
                print(f"| {r['tokens']} | {DEFAULT_STRATEGY} with records from {name}: {r[key]:.1f} ms = "
                      f"{r[key] / r['full']:.2f}x full (read + verify alone {r[name + '_read_ms']:.1f} ms) |")
    for ctx, r in rows.items():
        if "decode_tok_s" in r:
            print(f"decode after {specs[-1]} at {ctx} context: {r['decode_tok_s']:.0f} tokens/s "
                  f"({r['decode_eager_tok_s']:.0f} without CUDA graphs)")


if __name__ == "__main__":
    raise SystemExit(main())
