"""Fabricate a big journal fast: the rows calsched itself would have written, in bulk.

Driving a million events through :meth:`Journal.apply` takes half an hour at one commit
per transition; a benchmark that needs a million-event history cannot wait for that. So
:func:`fabricate` lets :meth:`Journal.open` make the schema, then writes the three tables
with the DB-API driver's ``executemany`` in large transactions, with every value passed
through the column's own SQLAlchemy bind processor (the same conversion calsched's Core
inserts apply), so a fabricated journal reads back, folds and verifies like a lived one.

What it writes, per slot, in ``seq`` order and with ``recorded_at`` increasing:

- a finished slot: ``receive`` (payload ``{"slot": <wire dict>}``), ``dispatch``, ``woke``
  and ``complete``: 4 events, two delivered outbox rows (``in_progress``, ``completed``);
- an active slot: ``receive``, ``dispatch``, ``woke``: it ends ``in_progress``, with one
  delivered outbox row; each active slot has its own agent, which has no other slot.

The ``slots`` projection rows are the fold of those events. ``tests/test_bench_fabricate.py``
proves it: ``Journal.verify()`` finds nothing, and the rows match a journal driven through
:meth:`Journal.apply`, column by column (ids and times aside).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Column, Engine, Table

from calsched.journal import Journal
from calsched.journal.chain import GENESIS, link, read_head
from calsched.journal.schema import events, outbox, slots
from calsched.model import Slot

__all__ = ["EVENTS_PER_ACTIVE", "EVENTS_PER_FINISHED", "Progress", "fabricate", "total_events"]

#: receive, dispatch, woke (then in_progress).
EVENTS_PER_ACTIVE = 3
#: receive, dispatch, woke, complete.
EVENTS_PER_FINISHED = 4

#: Called with (events written, events to write) after each committed chunk.
Progress = Callable[[int, int], None]

# Every column, in the tables' order (the outbox's id is the database's to give).
_EVENT_COLS = tuple(c.name for c in events.columns)
_OUTBOX_COLS = tuple(c.name for c in outbox.columns if c.name != "id")
_SLOT_COLS = tuple(c.name for c in slots.columns)

#: The summary a fabricated agent completes its slot with.
SUMMARY = "fabricated: done"


def total_events(*, active: int, history_events: int) -> int:
    """How many events :func:`fabricate` writes for these sizes."""
    return active * EVENTS_PER_ACTIVE + history_events


def _stderr_progress(done: int, total: int) -> None:
    print(f"  .. fabricated {done:,} / {total:,} events", file=sys.stderr, flush=True)


@dataclass
class _Chunk:
    events: list[tuple[Any, ...]]
    outbox: list[tuple[Any, ...]]
    slots: list[tuple[Any, ...]]


class _Writer:
    """Turns slots into rows with the columns' own bind processors, and inserts them."""

    def __init__(self, engine: Engine, identifier: str, start: datetime, step: timedelta) -> None:
        dialect = engine.dialect
        self.identifier = identifier
        self.start = start
        self.step = step
        self.dialect = dialect.name
        #: The chain hash the next fabricated event chains from.
        self.head = GENESIS
        self._time = _processor(events.c.recorded_at, engine)
        self._json = _processor(events.c.payload, engine)
        # One wire dict built by pydantic, then copied per slot: to_wire() per slot would
        # triple the cost, and the test compares the copy against the real thing.
        self._template = Slot(id="x", agent_id="x", title="x").to_wire()
        self._empty = self._json({})
        ph = "?" if dialect.paramstyle == "qmark" else "%s"
        self.sql = {
            "events": _insert_sql(events, _EVENT_COLS, ph),
            "outbox": _insert_sql(outbox, _OUTBOX_COLS, ph),
            "slots": _insert_sql(slots, _SLOT_COLS, ph),
        }

    def wire(self, slot_id: str, agent_id: str) -> dict[str, Any]:
        """The slot's wire dict, as ``Slot.to_wire()`` gives it."""
        return {**self._template, "id": slot_id, "agent_id": agent_id, "title": f"slot {slot_id}"}

    def at(self, seq: int) -> Any:
        """The stored form of the time of event ``seq``."""
        return self._time(self.start + self.step * seq)

    def slot(self, chunk: _Chunk, seq: int, slot_id: str, agent_id: str, *, done: bool) -> int:
        """Append one slot's rows to ``chunk``, its first event at ``seq``; the next seq."""
        ident = self.identifier
        wire = self.wire(slot_id, agent_id)
        steps: list[tuple[str, str, str | None, str, Any, str | None]] = [
            ("receive", "scheduler", None, "pending", self._json({"slot": wire}), None),
            ("dispatch", "scheduler", "pending", "dispatching", self._empty, None),
            ("woke", "scheduler", "dispatching", "in_progress", self._empty, None),
        ]
        if done:
            steps.append(("complete", "agent", "in_progress", "completed", self._empty, SUMMARY))
        moments = [self.start + self.step * (seq + i) for i in range(len(steps))]
        times = [self._time(m) for m in moments]
        for offset, (kind, actor, state_from, state_to, payload, summary) in enumerate(steps):
            at = times[offset]
            event_id = str(uuid.uuid4())
            content = {
                "seq": seq, "event_id": event_id, "identifier": ident, "slot_id": slot_id,
                "attempt": 1, "agent_id": agent_id, "kind": kind, "actor": actor,
                "state_from": state_from, "state_to": state_to, "summary": summary,
                "reason": None, "payload": {"slot": wire} if kind == "receive" else {},
                "recorded_at": moments[offset],
            }  # fmt: skip
            self.head = link(self.head, content)
            chunk.events.append(
                (
                    seq, event_id, ident, slot_id, 1, agent_id, kind, actor,
                    state_from, state_to, summary, None, payload, at, self.head,
                )
            )  # fmt: skip
            if state_to in ("in_progress", "completed"):
                # Delivered half a step later: the backend acknowledged each change.
                delivered = self._time(self.start + self.step * seq + self.step / 2)
                chunk.outbox.append(
                    (
                        seq, event_id, ident, slot_id, 1, state_to, summary, None,
                        at, 1, at, None, delivered, None,
                    )
                )  # fmt: skip
            seq += 1
        chunk.slots.append(
            (
                ident, slot_id, agent_id, "completed" if done else "in_progress", 1,
                self._json(wire), times[0], times[2], times[-1],
                times[-1] if done else None, SUMMARY if done else None, None, seq - 1,
            )
        )  # fmt: skip
        return seq


def _processor(column: Column[Any], engine: Engine) -> Callable[[Any], Any]:
    dialect = engine.dialect
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return lambda value: value
    return process


def _insert_sql(table: Table, columns: tuple[str, ...], ph: str) -> str:
    assert set(columns) <= set(table.c.keys()), f"unknown columns of {table.name}"
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([ph] * len(columns))})"
    )


def _plan(
    active: int, history_done: int, agents: int, prefix: str
) -> Iterator[tuple[str, str, bool]]:
    # Finished slots first (the older history), then the live ones, so every active slot
    # is its agent's only slot after the history's.
    for i in range(history_done):
        yield f"{prefix}-h{i}", f"{prefix}-agent-{i % agents}", True
    for i in range(active):
        yield f"{prefix}-a{i}", f"{prefix}-live-{i}", False


def fabricate(
    url: str,
    identifier: str,
    *,
    active: int,
    history_events: int,
    agents: int = 1000,
    prefix: str = "fab",
    end: datetime | None = None,
    step: timedelta = timedelta(milliseconds=1),
    chunk_events: int = 100_000,
    progress: Progress | None = None,
) -> None:
    """Write ``active`` in-progress slots and ``history_events`` events of finished slots.

    ``history_events`` must be a multiple of 4 (a finished slot has 4 events); the total
    is :func:`total_events`. Finished slots cycle over ``agents`` agents; each active slot
    has an agent of its own. Events are ``step`` apart, the last one at ``end`` (default:
    now). Slot ids start with ``prefix``: fabricate twice into one journal with two
    prefixes. ``progress`` defaults to a line on stderr per chunk for 200,000 events or
    more, and silence below.
    """
    if active < 0 or history_events < 0:
        raise ValueError("sizes cannot be negative")
    if history_events % EVENTS_PER_FINISHED:
        raise ValueError(f"history_events must be a multiple of {EVENTS_PER_FINISHED}")
    total = total_events(active=active, history_events=history_events)
    if progress is None and total >= 200_000:
        progress = _stderr_progress
    journal = Journal.open(url, identifier, upgrade=True)
    try:
        _fill(
            journal.engine,
            identifier,
            active,
            history_events // EVENTS_PER_FINISHED,
            agents=max(1, agents),
            prefix=prefix,
            end=end or datetime.now(UTC),
            step=step,
            chunk_events=chunk_events,
            total=total,
            progress=progress,
        )
    finally:
        journal.close()


def _fill(
    engine: Engine,
    identifier: str,
    active: int,
    finished: int,
    *,
    agents: int,
    prefix: str,
    end: datetime,
    step: timedelta,
    chunk_events: int,
    total: int,
    progress: Progress | None,
) -> None:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SELECT COALESCE(MAX(seq), 0) FROM events")
        row = cur.fetchone()
        assert row is not None
        base = int(row[0])
        # seq is explicit so the outbox and the projection can point at it without a
        # RETURNING per row; the times run up to ``end``, one step per event.
        writer = _Writer(engine, identifier, end - step * (base + total), step)
        with engine.connect() as conn:  # fabricating into a journal that has events
            writer.head = read_head(conn, identifier)
        sqlite = writer.dialect == "sqlite"
        if sqlite:
            # Random event ids make the unique index's inserts scattered: a big page cache
            # keeps them in memory (this connection only, closed with the engine).
            cur.execute("PRAGMA cache_size=-262144")
        seq, done = base + 1, 0
        chunk = _Chunk([], [], [])
        # Build the next chunk while the driver inserts the last one: the driver lets go
        # of the GIL while SQLite works, so the two overlap on a second core.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fabricate") as pool:
            pending: Future[int] | None = None
            for slot_id, agent_id, finished_slot in _plan(active, finished, agents, prefix):
                seq = writer.slot(chunk, seq, slot_id, agent_id, done=finished_slot)
                if len(chunk.events) >= chunk_events:
                    if pending is not None:
                        done += pending.result()
                        if progress is not None:
                            progress(done, total)
                    pending = pool.submit(_flush, raw, cur, writer, chunk, sqlite=sqlite)
                    chunk = _Chunk([], [], [])
            if pending is not None:
                done += pending.result()
            if chunk.events:
                done += _flush(raw, cur, writer, chunk, sqlite=sqlite)
        if progress is not None and total:
            progress(done, total)
        if not sqlite and total:
            # Explicit values do not move PostgreSQL's sequence; the journal's next
            # insert must not collide with a fabricated seq.
            cur.execute(
                "SELECT setval(pg_get_serial_sequence('events', 'seq'), "
                "(SELECT MAX(seq) FROM events))"
            )
            raw.commit()
        cur.close()
    finally:
        raw.close()


def _flush(raw: Any, cur: Any, writer: _Writer, chunk: _Chunk, *, sqlite: bool) -> int:
    # calsched's connect listener turns pysqlite's own transactions off: BEGIN ourselves.
    if sqlite:
        cur.execute("BEGIN IMMEDIATE")
    try:
        cur.executemany(writer.sql["events"], chunk.events)
        cur.executemany(writer.sql["outbox"], chunk.outbox)
        cur.executemany(writer.sql["slots"], chunk.slots)
        if sqlite:
            cur.execute("COMMIT")
        else:
            raw.commit()
    except BaseException:
        if sqlite:
            cur.execute("ROLLBACK")
        else:
            raw.rollback()
        raise
    return len(chunk.events)


if __name__ == "__main__":  # pragma: no cover - a manual timing aid
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
        began = time.perf_counter()
        fabricate(f"sqlite:///{tmp}/fab.db", "bench", active=0, history_events=n)
        print(f"{n:,} events in {time.perf_counter() - began:.1f} s")
