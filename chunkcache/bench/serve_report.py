"""Serving benchmark results: per-request measurements, one summary row per run, table, JSON and plot.

A run replays one trace against one server configuration. Its row says how much work got done
(requests/s, output tokens/s over the run's wall time), how long users waited (TTFT: submit to first
content; end-to-end: submit to the last event), and how much of the prompts the server reused from its
chunk caches (sum of cached tokens / sum of prompt tokens, as reported in each response's usage).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class RequestResult:
    """What one request of the trace measured; ``error`` set (and the rest partial) when it failed."""

    index: int
    ttft_s: float | None = None
    latency_s: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    engine_stats: dict | None = None  # in-process only: RequestHandle.stats (queue_ms, prefill_ms, chunks_hit...)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between order statistics; None if empty."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 2)


def _ms_p50(values_ms: list[float]) -> float | None:
    p50 = percentile(values_ms, 50)
    return None if p50 is None else round(p50, 2)


def summarize(results: list[RequestResult], wall_s: float) -> dict:
    """One run's row from its requests and its wall time (first submit to last completion)."""
    ok = [r for r in results if r.error is None]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    e2e = [r.latency_s for r in ok if r.latency_s is not None]
    prompt = sum(r.prompt_tokens for r in ok)
    errors = [r.error for r in results if r.error is not None]
    engine = [r.engine_stats for r in ok if r.engine_stats]
    return {
        "requests": len(results),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(ok) / wall_s, 4) if wall_s > 0 else None,
        "output_tokens_per_s": round(sum(r.completion_tokens for r in ok) / wall_s, 2) if wall_s > 0 else None,
        "ttft_ms_p50": _ms(percentile(ttft, 50)),
        "ttft_ms_p95": _ms(percentile(ttft, 95)),
        "ttft_ms_p99": _ms(percentile(ttft, 99)),
        "latency_ms_p50": _ms(percentile(e2e, 50)),
        "latency_ms_p95": _ms(percentile(e2e, 95)),
        "prompt_tokens": prompt,
        "cached_tokens": sum(r.cached_tokens for r in ok),
        "completion_tokens": sum(r.completion_tokens for r in ok),
        "reused_fraction": round(sum(r.cached_tokens for r in ok) / prompt, 4) if prompt else 0.0,
        # where the TTFT went (in-process runs only): waiting for admission vs the prefill itself
        "queue_ms_p50": _ms_p50([e["queue_ms"] for e in engine if "queue_ms" in e]),
        "prefill_ms_p50": _ms_p50([e["prefill_ms"] for e in engine if "prefill_ms" in e]),
        # and the prefill's parts: the model's compute, and capturing what the request taught into the store
        "compute_ms_p50": _ms_p50([e["compute_ms"] for e in engine if "compute_ms" in e]),
        "store_ms_p50": _ms_p50([e["store_ms"] for e in engine if "store_ms" in e]),
    }


def request_rows(results: list[RequestResult]) -> list[dict]:
    """Per-request measurements for the JSON file."""
    return [asdict(r) for r in results]


COLUMNS = [("requests_per_s", "req/s", "{:.2f}"), ("output_tokens_per_s", "out tok/s", "{:.1f}"),
           ("ttft_ms_p50", "TTFT p50", "{:.0f}"), ("ttft_ms_p95", "TTFT p95", "{:.0f}"),
           ("ttft_ms_p99", "TTFT p99", "{:.0f}"), ("latency_ms_p50", "e2e p50", "{:.0f}"),
           ("latency_ms_p95", "e2e p95", "{:.0f}"), ("reused_fraction", "reused", "{:.3f}"),
           ("errors", "errors", "{}")]


def table(runs: dict[str, dict]) -> str:
    """Fixed-width table, one row per run (latencies in ms)."""
    name_w = max(12, *(len(n) for n in runs))
    head = f"{'run':<{name_w}} " + " ".join(f"{h:>9}" for _, h, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for name, row in runs.items():
        cells = [f"{fmt.format(row[k]) if row.get(k) is not None else '-':>9}" for k, _, fmt in COLUMNS]
        lines.append(f"{name:<{name_w}} " + " ".join(cells))
    return "\n".join(lines)


def plot(runs: dict[str, dict], path: Path, title: str) -> None:
    """Two bar charts side by side: output tokens/s and TTFT p95 (ms) per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(names)), 4.2))
    for ax, key, label in ((axes[0], "output_tokens_per_s", "output tokens/s (higher is better)"),
                           (axes[1], "ttft_ms_p95", "TTFT p95, ms (lower is better)")):
        values = [runs[n].get(key) or 0.0 for n in names]
        bars = ax.bar(names, values, color="tab:blue" if key.startswith("output") else "tab:orange")
        ax.bar_label(bars, fmt="%.1f" if key.startswith("output") else "%.0f", fontsize=8)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=20)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
