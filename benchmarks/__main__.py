"""Runs benchmarks, prints one table per benchmark and one summary of their ratios and goals, and writes
``{"<name>": {"<figure>": number}}`` (a status beside the figures, such as inference_throughput's ``tensorrt``,
as an object)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from benchmarks import BENCHMARKS, ON_REQUEST
from benchmarks._summary import Figure, as_text, table


@contextlib.contextmanager
def _output_to(log: Path | None) -> Iterator[None]:
    """With a log, everything printed meanwhile goes there: this process's and (through the file descriptors
    they inherit) the services' and workers' it starts."""
    if log is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("a") as file:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="shorter runs: a smoke test, not a measurement")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures here")
    parser.add_argument("--minutes", type=float, help="how long the soak runs (default 20)")
    parser.add_argument(
        "--log", type=Path, metavar="FILE", help="the tables and the services' logs go here; shown: one line each"
    )
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_text("")
    results: dict[str, dict[str, Figure]] = {}
    failed: list[str] = []
    for name in args.names or [name for name in BENCHMARKS if name not in ON_REQUEST]:
        module = importlib.import_module(BENCHMARKS[name])
        heading = f"== {name}: {module.TITLE}{' (quick)' if args.quick else ''}"
        print(f"-- {name} ..." if args.log else heading, end=" " if args.log else "\n", flush=True)
        started = time.monotonic()
        options = {"minutes": args.minutes} if "minutes" in inspect.signature(module.run).parameters else {}
        with _output_to(args.log):
            if args.log:
                print(heading, flush=True)
            try:
                figures = module.run(args.quick, **options)
            except Exception:  # one broken benchmark does not hide the others' figures
                traceback.print_exc()
                failed.append(name)
                figures = {}
            else:
                results[name] = figures
            width = max(map(len, figures), default=0)
            for figure, value in figures.items():
                print(f"  {figure:<{width}}  {as_text(value):>12}")
            print(f"  ({time.monotonic() - started:.1f} s)", flush=True)
        if args.log:
            print(f"{'failed' if name in failed else 'done'} ({time.monotonic() - started:.0f} s)", flush=True)
    print(table(results, failed), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        if not args.log:
            print(f"wrote {args.json}")
    if failed:
        print(f"failed: {', '.join(failed)}{f' (see {args.log})' if args.log else ''}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
