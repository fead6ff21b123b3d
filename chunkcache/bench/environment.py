"""Where a benchmark ran (recorded in every results JSON) and how its ``--strategies`` list is read.

Kept apart from the quality benchmark's modules so the serving benchmark runs where their dependencies
(``rouge-score``) are not installed, e.g. on a lent GPU machine.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def split_specs(text: str) -> list[str]:
    """Split on commas that start a new strategy (``epic,cacheblend:ratio=0.3,check_layer=2`` keeps
    ``check_layer=2`` with cacheblend)."""
    specs: list[str] = []
    for part in filter(None, (x.strip() for x in text.split(","))):
        if "=" in part and ":" not in part and specs:
            specs[-1] += "," + part
        else:
            specs.append(part)
    return specs


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` where that file is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str) -> dict[str, str | int | None]:
    """Where the numbers were measured: host, CPU model, torch threads, torch version, GPU name."""
    return {"host": platform.node(), "arch": platform.machine(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None}
