"""GPU time-to-first-token of every reuse strategy on a Llama-3-8B-shaped model with random weights.

    python -m chunkcache.bench.ttft --contexts 4096,8192,16384 --json ttft.json

Random weights are fine for timing (DESIGN section 7): the work per token does not depend on the values.
Contexts are made of 512-token chunks after a 32-token template prefix, then a 64-token question. Every
chunk's isolated record is precomputed; TTFT = choose + partial prefill + first-token pick, synchronised,
median of ``--repeats`` runs after warm-up. Records sit in GPU memory (the fastest tier) for the main
column; ``host`` repeats cachecraft and cacheblend with records in pinned host memory, copies included.
``hf_sdpa`` is plain ``transformers`` with SDPA attention over the same prompt, the bar our ``full``
must not be slower than.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field

import torch

from chunkcache.engine.executor import partial_prefill
from chunkcache.engine.prompt import Layout, Span, template_key
from chunkcache.kv.build import isolated_record, template_record
from chunkcache.models.loader import wrap
from chunkcache.strategies import make_strategy
from chunkcache.strategies.base import Request

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                 rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192})
STRATEGIES = ["full", "prefix", "naive", "epic", "cacheblend", "cachecraft"]


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
    """Median wall time (ms) of ``repeats`` synchronised calls after one warm-up, and the last result."""
    out = fn()
    _sync()
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        out = fn()
        _sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def run_context(model, context: int, chunk: int, repeats: int, strategies: list[str]) -> dict:
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
    host = [r.to("cpu", torch.bfloat16) for r in records]
    if torch.cuda.is_available():
        for r in host:
            r.keys = [k.pin_memory() for k in r.keys]
            r.values = [v.pin_memory() for v in r.values]

    def prefill(spec: str, recs):
        strat = make_strategy(spec)
        decision = strat.decide(Request(layout, [[r] for r in recs], model.shape.n_layers))
        res = partial_prefill(model, ids, layout, prefix, decision.records, decision.plan)
        return int(torch.argmax(res.logits)), res

    row: dict[str, float] = {}
    with torch.inference_mode():
        row["hf_sdpa"], ref = timed(lambda: model.hf(ids[None], use_cache=False).logits[0, -1], repeats)
        for spec in strategies:
            row[spec], (tok, res) = timed(lambda: prefill(spec, records), repeats)
            n = len(res.context_computed_per_layer)
            row[f"{spec}_recompute"] = sum(res.context_computed_per_layer) / (n * layout.context_tokens)
            if spec == "full":
                row["full_vs_hf_rel_err"] = float((res.logits - ref.float()).norm() / ref.float().norm())
        for spec in ("cacheblend", "cachecraft"):
            row[f"{spec}_host"], _ = timed(lambda: prefill(spec, host), repeats)
    row["tokens"] = int(ids.numel())
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--contexts", default="4096,8192,16384")
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layers", type=int, default=None, help="fewer layers for a quick check")
    p.add_argument("--strategies", default=",".join(STRATEGIES),
                   help="strategy specs to time (full first), e.g. add cachecraft:alpha=0.15")
    p.add_argument("--json", default="ttft.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA device")
    specs = ["full"] + [x for x in args.strategies.split(",") if x and x != "full"]
    model = build_model(args.layers, "cuda")
    rows = {}
    for ctx in (int(c) for c in args.contexts.split(",")):
        rows[ctx] = run_context(model, ctx, args.chunk, args.repeats, specs)
        torch.cuda.empty_cache()
    cols = ["hf_sdpa"] + specs + ["cacheblend_host", "cachecraft_host"]
    print(f"| {'tokens':>6} | " + " | ".join(f"{c:>10}" for c in cols) + " |   (TTFT ms, median)")
    for r in rows.values():
        print(f"| {r['tokens']:>6} | " + " | ".join(f"{r[c]:>10.1f}" for c in cols) + " |")
    print("speed-up over our full: " + "; ".join(
        f"{ctx}: " + ", ".join(f"{s} {r['full'] / r[s]:.1f}x" for s in specs[1:]) for ctx, r in rows.items()))
    print("recompute fraction: " + ", ".join(f"{s} {rows[max(rows)][s + '_recompute']:.3f}" for s in specs))
    payload = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": "llama3-8b-shape-random",
               "chunk": args.chunk, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    with open(args.json, "w") as f:
        json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
