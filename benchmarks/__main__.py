"""Runs benchmarks, prints one table per benchmark and writes ``{"<name>": {"<figure>": number}}``."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
from pathlib import Path

from benchmarks import BENCHMARKS, ON_REQUEST


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="shorter runs: a smoke test, not a measurement")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures here")
    parser.add_argument("--minutes", type=float, help="how long the soak runs (default 20)")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    results: dict[str, dict[str, float]] = {}
    for name in args.names or [name for name in BENCHMARKS if name not in ON_REQUEST]:
        module = importlib.import_module(BENCHMARKS[name])
        print(f"== {name}: {module.TITLE}{' (quick)' if args.quick else ''}", flush=True)
        started = time.monotonic()
        options = {"minutes": args.minutes} if "minutes" in inspect.signature(module.run).parameters else {}
        figures = module.run(args.quick, **options)
        results[name] = figures
        width = max(map(len, figures))
        for figure, value in figures.items():
            print(f"  {figure:<{width}}  {value:>12,.3f}")
        print(f"  ({time.monotonic() - started:.1f} s)", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
