"""Start-up reads nothing proportional to history (issue 7, point 3).

Every read that ``Scheduler.recover``/``start`` and the first heartbeat make is run over
the same live slots twice: with a short history and with twenty times more finished
slots. The work the database does must not grow with it. Work is counted, not timed:
SQLite's virtual-machine instructions (a progress handler called on every one), and on
PostgreSQL the rows every plan node produced or filtered out (``EXPLAIN ANALYZE``), with
sequential scans disabled so the planner shows what the indexes allow rather than what is
cheapest for a table this small (a sort still counts: its input rows are its child's).
PostgreSQL's figure misses index entries skipped inside one index range, so SQLite's
instruction count is the stricter of the two.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select, text

from calsched.journal import Journal
from calsched.journal.schema import events, outbox, slots
from calsched.model import SlotState, SlotView

Drive = Callable[..., SlotView]
Read = Callable[[Journal], object]

_T0 = datetime(2026, 1, 1, tzinfo=UTC)
_FINISHED = (
    ("receive", None, "pending"),
    ("dispatch", "pending", "dispatching"),
    ("woke", "dispatching", "in_progress"),
    ("complete", "in_progress", "completed"),
)

#: What recover, start and the first heartbeat read, by journal method.
STARTUP_READS: dict[str, Read] = {
    "load_active": lambda j: j.load_active(),
    "history": lambda j: j.history(limit=32),
    "outbox_counts": lambda j: j.outbox_counts(),
    "due_outbox": lambda j: j.due_outbox(datetime.now(UTC)),
    "get_many": lambda j: j.get_many(["live-0", "done-3", "never-seen"]),
    "settled_at": lambda j: j.settled_at(j.get_many(["live-0", "done-3"]).values()),
}


def add_finished_slots(journal: Journal, first: int, count: int, *, delivered: bool = True) -> None:
    """Append ``count`` completed slots straight into the tables, as the journal would
    have written them: four events, the projection row, two outbox rows (delivered, or
    with ``delivered=False`` still waiting, as after a backend outage)."""
    with journal.engine.connect() as conn:
        last = conn.execute(select(func.max(events.c.seq))).scalar_one() or 0
    seqs = itertools.count(int(last) + 1)
    ev: list[dict[str, Any]] = []
    sl: list[dict[str, Any]] = []
    ob: list[dict[str, Any]] = []
    for i in range(first, first + count):
        slot_id, agent_id = f"done-{i}", f"old-agent-{i % 7}"
        wire = {"id": slot_id, "agent_id": agent_id, "title": None, "prompt_text": None}
        seq, at = 0, _T0
        for kind, state_from, state_to in _FINISHED:
            seq = next(seqs)
            at = _T0 + timedelta(seconds=seq)
            key = str(uuid.uuid4())
            ev.append(
                {
                    "seq": seq,
                    "event_id": key,
                    "identifier": journal.identifier,
                    "slot_id": slot_id,
                    "attempt": 1,
                    "agent_id": agent_id,
                    "kind": kind,
                    "actor": "scheduler",
                    "state_from": state_from,
                    "state_to": state_to,
                    "payload": {"slot": wire} if kind == "receive" else {},
                    "recorded_at": at,
                }
            )
            if state_to in ("in_progress", "completed"):
                ob.append(
                    {
                        "event_seq": seq,
                        "idempotency_key": key,
                        "identifier": journal.identifier,
                        "slot_id": slot_id,
                        "attempt": 1,
                        "status": state_to,
                        "occurred_at": at,
                        "tries": 1,
                        "next_try_at": at,
                        "delivered_at": at if delivered else None,
                    }
                )
        sl.append(
            {
                "identifier": journal.identifier,
                "slot_id": slot_id,
                "agent_id": agent_id,
                "state": "completed",
                "attempt": 1,
                "slot": wire,
                "received_at": _T0,
                "started_at": _T0,
                "updated_at": at,
                "resolved_at": at,
                "last_seq": seq,
            }
        )
    with journal.engine.begin() as conn:
        conn.execute(insert(events), ev)
        conn.execute(insert(slots), sl)
        conn.execute(insert(outbox), ob)
        if conn.dialect.name == "postgresql":  # explicit seqs do not move the sequence
            conn.execute(
                text("SELECT setval(pg_get_serial_sequence('events', 'seq'), max(seq)) FROM events")
            )


@contextmanager
def _sqlite_steps(journal: Journal) -> Iterator[list[int]]:
    """Count SQLite VM instructions run on any connection checked out meanwhile."""
    steps = [0]

    def _tick() -> int:
        steps[0] += 1
        return 0  # 0: carry on

    def _checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        dbapi_conn.set_progress_handler(_tick, 1)

    def _checkin(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.set_progress_handler(None, 1)

    event.listen(journal.engine, "checkout", _checkout)
    event.listen(journal.engine, "checkin", _checkin)
    try:
        yield steps
    finally:
        event.remove(journal.engine, "checkout", _checkout)
        event.remove(journal.engine, "checkin", _checkin)


def _plan_rows(node: dict[str, Any]) -> int:
    """Rows a plan node and its children produced or threw away (actual, every loop)."""
    loops = int(node.get("Actual Loops", 1))
    own = (
        float(node.get("Actual Rows", 0))
        + float(node.get("Rows Removed by Filter", 0))
        + float(node.get("Rows Removed by Index Recheck", 0))
    ) * loops
    return int(own) + sum(_plan_rows(child) for child in node.get("Plans", []))


def _postgres_rows(journal: Journal, read: Read) -> int:
    """Run ``read``, then EXPLAIN ANALYZE each of its statements; the rows they touched."""
    captured: list[tuple[str, Any]] = []

    def _capture(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, params))

    event.listen(journal.engine, "before_cursor_execute", _capture)
    try:
        read(journal)
    finally:
        event.remove(journal.engine, "before_cursor_execute", _capture)
    assert captured, "the read ran no SELECT"
    total = 0
    raw = journal.engine.raw_connection()
    try:
        cursor = raw.cursor()
        # Fresh statistics, as autovacuum would keep them: without them the planner
        # guesses, and may walk an index that does not fit the query at all.
        cursor.execute("ANALYZE events, slots, outbox")
        cursor.execute("SET enable_seqscan = off")
        for statement, params in captured:
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params)
            plan = cursor.fetchone()[0]
            plan = json.loads(plan) if isinstance(plan, str) else plan
            total += _plan_rows(plan[0]["Plan"])
        raw.rollback()
    finally:
        raw.close()
    return total


def _work(journal: Journal, read: Read) -> int:
    if journal.engine.dialect.name == "sqlite":
        with _sqlite_steps(journal) as steps:
            read(journal)
        return steps[0]
    return _postgres_rows(journal, read)


#: Undelivered rows behind a backend outage: more than one ``due_outbox`` page (100).
BACKLOG = 150


def _journal_with_history(journal: Journal, drive: Drive, history: int) -> Journal:
    """Live slots of every kind start-up meets, a dead row, a retried row, ``history``
    finished slots, and last (the newest ids) a backlog of undelivered ones."""
    for i in range(6):
        state = (SlotState.in_progress, SlotState.paused, SlotState.pending)[i % 3]
        drive(journal, f"live-{i}", state, agent_id=f"agent-{i}")
    drive(journal, "ended", SlotState.completed, agent_id="agent-9")
    rows = journal.outbox_rows()
    journal.mark_dead(rows[0].id, "refused for good")
    journal.mark_retry(rows[1].id, datetime.now(UTC), "503")
    add_finished_slots(journal, 0, history)
    add_finished_slots(journal, history, BACKLOG, delivered=False)
    return journal


@pytest.mark.parametrize("name", list(STARTUP_READS))
def test_startup_read_does_not_grow_with_history(
    open_journal: Callable[..., Journal], drive: Drive, name: str
) -> None:
    """Same live slots and backlog, 20x the finished slots: the read does no more work.

    Two identifiers in one database, the longer history written last: as in a real
    journal, the backlog has the newest ids, behind all of the history.
    """
    read = STARTUP_READS[name]
    short = _journal_with_history(open_journal("host-a"), drive, 60)
    long = _journal_with_history(open_journal("host-b"), drive, 1200)
    work = {}
    for journal in (short, long):
        read(journal)  # warm: the first call may compile statements and fill caches
        work[journal.identifier] = _work(journal, read)
    # Index seeks are one step whatever the size; a scan or a sort costs per row (the
    # history sort and the dead-letter count did: 10-20x here before migration 0002, and
    # PostgreSQL walked the primary key through the history for the due outbox rows).
    few, many = work["host-a"], work["host-b"]
    assert many <= few * 1.1 + 20, f"{name}: {few} -> {many} with 20x the history"
