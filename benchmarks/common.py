"""What every benchmark shares: interleaved repeats, medians, one row per figure.

A benchmark module exposes ``run(cfg: BenchConfig) -> list[Row]``. Each figure is
measured against its comparison in the same process and moment: :func:`interleaved`
runs every contender once per round, rotating who goes first, and the row carries the
median of the rounds. Absolute numbers on a shared machine are noisy; the ratio is what
a reader should look at.
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BenchConfig",
    "Row",
    "format_table",
    "interleaved",
    "median",
    "percentile",
    "pg_schema",
    "progress",
    "ratio",
    "timed",
    "write_json",
]


@dataclass(frozen=True)
class BenchConfig:
    """How big and how often: ``quick`` is CI's seconds-long smoke run."""

    quick: bool
    repeats: int
    workdir: Path
    pg_url: str | None = None
    only: frozenset[str] = frozenset()

    def size(self, quick: int, full: int) -> int:
        """``quick`` in quick mode, else ``full``."""
        return quick if self.quick else full


@dataclass
class Row:
    """One figure: ours, its comparison, and their ratio (ours / theirs, in ``unit``).

    ``higher_is_better`` says how to read the ratio: for a rate (events/s) a ratio above
    1 means calsched is faster; for a time or a size, below 1 means calsched is better.
    """

    bench: str  # "a. single writer", ...
    case: str  # "calsched journal", "raw sqlite3", ...
    size: str  # "2,000 transitions", "10,000 slots", ...
    unit: str  # "transitions/s", "ms", "B/slot"
    value: float
    higher_is_better: bool = True
    compare: str | None = None
    compare_value: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    target: str | None = None  # e.g. ">= 0.5x raw sqlite3"
    met: bool | None = None
    samples: list[float] = field(default_factory=list)
    note: str | None = None

    @property
    def ratio(self) -> float | None:
        """ours / theirs, or ``None`` without a comparison."""
        return ratio(self.value, self.compare_value)


def ratio(ours: float, theirs: float | None) -> float | None:
    """``ours / theirs``; ``None`` when there is nothing (or zero) to compare with."""
    if theirs is None or theirs == 0:
        return None
    return ours / theirs


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1))
    return ordered[rank]


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` takes, with the garbage collector settled first."""
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    repeats: int, contenders: Mapping[str, Callable[[], float]]
) -> dict[str, list[float]]:
    """Run each contender ``repeats`` times, one of each per round, rotating the order.

    A contender returns its own figure (a rate, a time); the result maps each name to its
    samples in round order. Rotating who goes first spreads warm caches and background
    load evenly over everyone.
    """
    names = list(contenders)
    out: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            out[name].append(contenders[name]())
    return out


def median(values: Sequence[float]) -> float:
    """The median of the samples."""
    return statistics.median(values)


def progress(message: str) -> None:
    """One line on stderr, so the table on stdout stays clean."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def _num(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:,.1f}"
    else:
        text = f"{value:,.3g}"
    return f"{text} {unit}".strip()


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table: one line per figure, its comparison and the ratio."""
    headers = ["bench", "case", "size", "value", "compared with", "ratio", "p50/p99 ms", "target"]
    lines: list[list[str]] = []
    for r in rows:
        cmp = f"{r.compare}: {_num(r.compare_value, r.unit)}" if r.compare else "-"
        rt = r.ratio
        lat = "-" if r.p50_ms is None else f"{_num(r.p50_ms)}/{_num(r.p99_ms)}"
        tgt = "-" if r.target is None else f"{r.target} {'ok' if r.met else 'MISSED'}"
        lines.append(
            [
                r.bench,
                r.case,
                r.size,
                _num(r.value, r.unit),
                cmp,
                "-" if rt is None else f"{rt:.2f}x",
                lat,
                tgt,
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out.extend("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)
    return "\n".join(out)


def write_json(rows: Sequence[Row], path: Path, *, mode: str) -> None:
    """The rows, with the ratio and the machine's shape, as JSON for later comparison."""
    doc = {
        "mode": mode,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


@contextmanager
def pg_schema(admin_url: str, prefix: str = "bench") -> Iterator[str]:
    """A PostgreSQL URL whose connections use a fresh schema, dropped (CASCADE) after.

    The same recipe as the tests' ``pg_url`` fixture: others share the database, so only
    ever create and drop our own schema.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    schema = f"{prefix}_{uuid.uuid4().hex}"
    admin = create_engine(admin_url, poolclass=NullPool)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(admin_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            # A connection left open inside a transaction would block the DROP forever.
            conn.execute(text("SET LOCAL lock_timeout = '15s'"))
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
