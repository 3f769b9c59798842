"""e. ``Journal.verify()`` over N events, against raw sqlite3 reading the same rows.

The journal is made by :func:`benchmarks.fabricate.fabricate` (1% of its slots still in
progress, the rest finished). calsched folds every event and compares the fold with the
stored projection; the raw side only reads every column of ``events`` in ``seq`` order,
the floor any verify must pay. Both are in events/s.
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import BenchConfig, Row, interleaved, median, progress, ratio, timed
from benchmarks.fabricate import EVENTS_PER_ACTIVE, fabricate, total_events
from benchmarks.samesql import raw_connection
from calsched.journal import Journal
from calsched.journal.schema import events

__all__ = ["BENCH", "run"]

BENCH = "e. journal verify"
IDENTIFIER = "bench"


def sizes(n: int) -> tuple[int, int]:
    """(active slots, history events) that make exactly ``n`` events, 1% of slots live."""
    if n % 4:
        raise ValueError("the event count must be a multiple of 4")
    active = (n // 100) // 4 * 4  # a multiple of 4 keeps the history whole slots
    return active, n - EVENTS_PER_ACTIVE * active


def raw_read(connection: Any) -> int:
    """Read every column of every event in ``seq`` order; the number of rows."""
    columns = ", ".join(events.c.keys())
    cur = connection.cursor()
    try:
        cur.execute(f"SELECT {columns} FROM events ORDER BY seq")
        count = 0
        while batch := cur.fetchmany(1000):
            count += len(batch)
        return count
    finally:
        cur.close()


def run(cfg: BenchConfig) -> list[Row]:
    """One row: verify's events/s against the raw read's."""
    n = cfg.size(20_000, 1_000_000)
    active, history = sizes(n)
    assert total_events(active=active, history_events=history) == n
    work = cfg.workdir / "e"
    work.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{work / 'journal.db'}"
    progress(f"e: fabricating {n:,} events")
    fabricate(url, IDENTIFIER, active=active, history_events=history)
    journal = Journal.open(url, IDENTIFIER)
    connection = raw_connection(url)
    try:

        def ours() -> None:
            found = journal.verify()
            # A mismatch would mean the fabricated journal, not verify, is being measured.
            assert found == [], f"fabricated journal does not verify: {found[:3]}"

        def theirs() -> None:
            assert raw_read(connection) == n

        progress(f"e: verify over {n:,} events, {cfg.repeats} rounds")
        samples = interleaved(
            cfg.repeats, {"calsched": lambda: n / timed(ours), "raw": lambda: n / timed(theirs)}
        )
    finally:
        connection.close()
        journal.close()
    value, other = median(samples["calsched"]), median(samples["raw"])
    found = ratio(value, other)
    return [
        Row(
            bench=BENCH,
            case="Journal.verify() (SQLite)",
            size=f"{n:,} events, {active:,} live slots",
            unit="events/s",
            value=value,
            compare="raw sqlite3 read",
            compare_value=other,
            target=">= 0.5x raw read",
            met=found is not None and found >= 0.5,
            samples=samples["calsched"],
            note="raw: every column of events, ordered by seq, fetchmany(1000)",
        )
    ]
