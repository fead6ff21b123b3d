"""Benchmark output: a terminal table, the JSON contract, and the fidelity-vs-recompute plot."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

COLUMNS = [("f1", "F1", "{:.3f}"), ("accuracy", "accuracy", "{:.2f}"), ("first_token_agreement", "1st-tok agr", "{:.2f}"),
           ("first_token_kl", "1st-tok KL", "{:.4f}"), ("answer_token_agreement", "ans-tok agr", "{:.2f}"),
           ("answer_token_kl", "ans-tok KL", "{:.4f}"), ("answer_kl_mean", "ans KL mean", "{:.4f}"),
           ("rougeL_vs_full", "RougeL/full", "{:.3f}"), ("exact_match_vs_full", "EM/full", "{:.2f}"),
           ("recompute_fraction", "recompute", "{:.3f}"), ("ttft_ms_mean", "TTFT ms", "{:.0f}"),
           ("ttft_ms_p50", "p50 ms", "{:.0f}"), ("prefill_flops", "GFLOP", "{:.1f}")]
# Paired differences vs full: mean [95% interval].
DIFF_COLUMNS = [("f1", "ΔF1 [lo, hi]"), ("accuracy", "Δacc [lo, hi]")]
DIFF_WIDTH = 21


def _diff_cell(m: dict, key: str) -> str:
    mean, ci = m.get(f"{key}_diff_vs_full"), m.get(f"{key}_diff_ci95")
    if mean is None:
        return "-"
    return f"{mean:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else f"{mean:+.2f}"


def table(results: dict[str, dict]) -> str:
    """Fixed-width table, one row per strategy spec."""
    name_w = max(12, *(len(s) for s in results))
    head = (f"{'strategy':<{name_w}} " + " ".join(f"{h:>11}" for _, h, _ in COLUMNS) + " "
            + " ".join(f"{h:>{DIFF_WIDTH}}" for _, h in DIFF_COLUMNS))
    lines = [head, "-" * len(head)]
    for spec, m in results.items():
        cells = []
        for key, _, fmt in COLUMNS:
            v = m.get(key)
            if v is not None and key == "prefill_flops":
                v = v / 1e9
            cells.append(f"{fmt.format(v) if v is not None else '-':>11}")
        cells += [f"{_diff_cell(m, key):>{DIFF_WIDTH}}" for key, _ in DIFF_COLUMNS]
        lines.append(f"{spec:<{name_w}} " + " ".join(cells))
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def publish(result: dict, text: str, json_path: Path, plot_path: Path | None,
            draw: Callable[[dict, Path], None]) -> None:
    """Print a bench's table ``text``, write its ``result`` as JSON and, when asked, ``draw`` its plot."""
    print(text)
    write_json(json_path, result)
    if plot_path:
        draw(result, plot_path)


def plot(results: dict[str, dict], path: Path, title: str) -> None:
    """ROUGE-L vs full and first-token KL against recompute fraction; one curve per strategy family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families: dict[str, list[tuple[float, float, float, str]]] = {}
    for spec, m in results.items():
        fam, _, param = spec.partition(":")
        families.setdefault(fam, []).append((m["recompute_fraction"], m["rougeL_vs_full"], m["first_token_kl"],
                                             param.split("=")[-1] if param else ""))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for fam, pts in sorted(families.items()):
        pts.sort()
        xs = [p[0] for p in pts]
        for ax, idx in ((axes[0], 1), (axes[1], 2)):
            ax.plot(xs, [p[idx] for p in pts], marker="o", label=fam)
            for p in pts:
                if p[3]:
                    ax.annotate(p[3], (p[0], p[idx]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[0].set_ylabel("ROUGE-L vs full prefill")
    axes[1].set_ylabel("first-token KL vs full (nats)")
    axes[1].set_yscale("symlog", linthresh=1e-3)
    for ax in axes:
        ax.set_xlabel("recompute fraction of context tokens")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
