"""``chunkcache bench merge``: join the JSON results of one quality bench run in parts (``--skip``) into one.

A 50-question MuSiQue run of the evaluation model takes about two hours on two cores, so it may be run in
parts: ``--limit 21``, then ``--skip 21``. The parts must be contiguous and agree on dataset, model, device and
answer length. Each summary value in a part is a mean over that part's examples, so the joined mean is the
mean weighted by their counts (exact); the paired F1 and accuracy differences against ``full`` and their
95% intervals are recomputed from the per-example values; TTFT p50 is recomputed where every part has
per-example TTFTs (results written before those were kept have only the mean, which joins exactly).
``--rename OLD NEW`` joins a strategy that a part ran under another spec: in a part that has OLD, OLD's result
is taken as NEW's, and a result that part has under NEW itself is left out (and said so). Name only specs that
compute the same thing (for example a default written out in full, where the default was then another setting).

    chunkcache bench merge results/a.json results/b.json --strategies full,naive,relevance \\
        --rename relevance:ratio=0.2,rest=probe relevance --json results/joined.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from chunkcache.bench.metrics import paired_difference
from chunkcache.bench.report import table, write_json
from chunkcache.bench.runner import METRICS, PAIRED

# defined only where full's answer has a first answer token (for results without per-example records)
ANSWER_TOKEN = {"answer_token_kl", "answer_token_agreement"}
MUST_AGREE = ("dataset", "model")
SETTINGS_AGREE = ("max_new_tokens", "device", "dtype")


def load_parts(paths: list[Path], renames: list[tuple[str, str]]) -> list[dict]:
    """The parts in order, strategies renamed; refuses parts that are not one contiguous run of one setup."""
    parts = []
    for path in paths:
        part = json.loads(path.read_text())
        strategies = part["strategies"]
        for old, new in renames:
            if old in strategies:
                if new in strategies:
                    print(f"{path}: {old} is taken as {new}; its own {new} result is left out")
                strategies[new] = strategies.pop(old)
        part["path"] = str(path)
        parts.append(part)
    first = parts[0]
    expected_skip = first.get("skip", 0)
    for part in parts:
        for key in MUST_AGREE:
            if part[key] != first[key]:
                raise SystemExit(f"error: {part['path']} has {key} {part[key]!r}, {first['path']} {first[key]!r}")
        for key in SETTINGS_AGREE:
            if part["settings"][key] != first["settings"][key]:
                raise SystemExit(f"error: {part['path']} has {key} {part['settings'][key]!r}, "
                                 f"{first['path']} {first['settings'][key]!r}")
        if part.get("skip", 0) != expected_skip:
            raise SystemExit(f"error: {part['path']} starts at example {part.get('skip', 0)}, expected "
                             f"{expected_skip} (parts must be contiguous and in order)")
        expected_skip += part["n"]
    return parts


def _weight(part: dict, spec: str, key: str) -> int:
    """How many examples a part's mean of ``key`` is over: counted from its per-example records, or, in a
    result written before those kept every value, from what defines each metric."""
    m = part["strategies"][spec]
    if all("ttft_ms" in e for e in m["examples"]):  # per-example records of every value (runner.Rows)
        per_example = "ttft_ms" if key == "ttft_ms_mean" else key
        return sum(1 for e in m["examples"] if per_example in e)
    if key in ANSWER_TOKEN:
        return m["answer_token_examples"]
    if key == "answer_kl_mean" and any(not e["answer"] for e in part["strategies"]["full"]["examples"]):
        raise SystemExit(f"error: {part['path']}: full gave an empty answer, so answer_kl_mean's count is unknown")
    return part["n"]


def join(parts: list[dict], specs: list[str]) -> dict[str, dict]:
    """One summary per strategy over all parts' examples (see module docstring)."""
    out: dict[str, dict] = {}
    for spec in specs:
        missing = [p["path"] for p in parts if spec not in p["strategies"]]
        if missing:
            raise SystemExit(f"error: strategy {spec!r} is not in {', '.join(missing)} (see --rename)")
        ms = [p["strategies"][spec] for p in parts]
        m: dict = {}
        for key in METRICS + ["ttft_ms_mean"]:
            pairs = [(mm[key], _weight(p, spec, key)) for p, mm in zip(parts, ms) if key in mm]
            if len(pairs) == len(parts) and sum(w for _, w in pairs):
                m[key] = sum(v * w for v, w in pairs) / sum(w for _, w in pairs)
        m["answer_token_examples"] = sum(mm["answer_token_examples"] for mm in ms)
        m["examples"] = [e for mm in ms for e in mm["examples"]]
        if all("ttft_ms" in e for e in m["examples"]):
            m["ttft_ms_p50"] = statistics.median(e["ttft_ms"] for e in m["examples"])
        m["seconds"] = sum(mm["seconds"] for mm in ms)
        out[spec] = m
    full = out["full"]["examples"]
    for m in out.values():
        for key in PAIRED:
            mean, ci = paired_difference([e[key] for e in m["examples"]], [e[key] for e in full])
            m[f"{key}_diff_vs_full"] = mean
            m[f"{key}_diff_ci95"] = list(ci) if ci else None
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("parts", type=Path, nargs="+", help="JSON results of the parts, in example order")
    p.add_argument("--strategies", required=True, help="comma-separated specs to join (full first)")
    p.add_argument("--rename", action="append", nargs=2, default=[], metavar=("OLD", "NEW"),
                   help="take a part's result under spec OLD as spec NEW's (module docstring)")
    p.add_argument("--json", type=Path, required=True, help="where to write the joined result")


def command(args: argparse.Namespace) -> int:
    renames = [tuple(r) for r in args.rename]
    specs = args.strategies.split(",")
    if specs[0] != "full":
        raise SystemExit("error: --strategies must start with full (the reference)")
    parts = load_parts(args.parts, renames)
    results = join(parts, specs)
    print(table(results))
    write_json(args.json, {
        "model": parts[0]["model"], "dataset": parts[0]["dataset"], "skip": parts[0].get("skip", 0),
        "n": sum(p["n"] for p in parts), "strategies": results,
        "parts": [{"path": p["path"], "skip": p.get("skip", 0), "n": p["n"], "renamed": args.rename,
                   "settings": p["settings"]} for p in parts],
    })
    return 0
