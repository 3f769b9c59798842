"""``python -m benchmarks``: run the suites, print the table, write the JSON.

Quick mode (the default) uses small sizes and finishes in well under two minutes; CI runs
it and asserts nothing about time. ``--full`` uses the sizes issue 7 names. Every figure
is the median of ``--repeats`` interleaved rounds (3 by default) measured against its
comparison in the same run. Progress goes to stderr, the table to stdout, the rows to
``benchmarks/results/{quick,full}.json`` (or ``--json PATH``).

A suite is a module exposing ``run(cfg: BenchConfig) -> list[Row]``, listed in
:data:`SUITES` under its letter in the issue.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import BenchConfig, Row, format_table, write_json

#: Letter (issue 7, point 1) -> module with ``run(cfg) -> list[Row]``.
SUITES: dict[str, str] = {
    "a": "benchmarks.write",
    "b": "benchmarks.concurrent",
    "c": "benchmarks.burst",
    "d": "benchmarks.restart",
    "e": "benchmarks.verify",
    "f": "benchmarks.memory",
    "g": "benchmarks.control_api",
}

RESULTS = Path(__file__).resolve().parent / "results"
PG_ENV = "CALSCHED_TEST_PG_URL"


def _letters(text: str) -> list[str]:
    letters = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [x for x in letters if x not in SUITES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown suite {', '.join(unknown)}; choose from {', '.join(sorted(SUITES))}"
        )
    return letters


def _repeats(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("at least one round")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="calsched's benchmarks: a table of figures against their comparisons.",
        epilog=f"Suites: {', '.join(f'{k}={v}' for k, v in sorted(SUITES.items()))}. "
        f"PostgreSQL variants run when {PG_ENV} is set.",
    )
    p.add_argument("--full", action="store_true", help="the sizes issue 7 names (slow)")
    p.add_argument(
        "--only", type=_letters, default=None, metavar="a,b,...", help="run only these suites"
    )
    p.add_argument(
        "--repeats", type=_repeats, default=3, metavar="N", help="interleaved rounds (default 3)"
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="where to write the rows (default benchmarks/results/quick.json or full.json)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen suites; 1 if any failed (the others still run and are written)."""
    args = parser().parse_args(argv)
    letters = args.only or sorted(SUITES)
    mode = "full" if args.full else "quick"
    out = args.json or RESULTS / f"{mode}.json"
    rows: list[Row] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="calsched-bench-") as tmp:
        cfg = BenchConfig(
            quick=not args.full,
            repeats=args.repeats,
            workdir=Path(tmp),
            pg_url=os.environ.get(PG_ENV) or None,
            only=frozenset(letters),
        )
        for letter in letters:
            began = time.perf_counter()
            print(f"[{letter}] {SUITES[letter]} ({mode})", file=sys.stderr, flush=True)
            try:
                module = importlib.import_module(SUITES[letter])
                rows.extend(module.run(cfg))
            except Exception:  # one broken suite must not hide the others' figures
                traceback.print_exc()
                failed.append(letter)
            took = time.perf_counter() - began
            print(f"[{letter}] done in {took:.1f} s", file=sys.stderr, flush=True)
    # A figure that is not a finite number means the suite measured nothing: a failure.
    broken = [f"{r.bench} / {r.case}" for r in rows if not math.isfinite(r.value)]
    if broken:
        failed.append("non-finite: " + "; ".join(broken))
    print(format_table(rows))
    write_json(rows, out, mode=mode)
    print(f"rows written to {out}", file=sys.stderr)
    if failed:
        print(f"suites that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
