"""``chunkcache`` command line: ingest, ask, cache, bench."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from chunkcache.bench import command as bench

    p = argparse.ArgumentParser(prog="chunkcache", description="RAG that never prefills the same chunk twice.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    bench.add_arguments(sub.add_parser("bench", help="quality and speed of every reuse strategy"))
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command == "bench":
            from chunkcache.bench.command import main as bench_main

            return bench_main(args)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
