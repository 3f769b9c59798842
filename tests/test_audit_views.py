"""The auditors' views (migration 0007): times formatted alike on SQLite and PostgreSQL,
durations to the microsecond, live attempts without a total, and the way back to 0004.

docs/audit.md's queries over a scheduler's journal are tests/test_docs.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import inspect, text

from calsched.journal import Journal, TransitionRequest, migrate
from calsched.model import Trigger
from tests.conftest import FakeClock

Fire = Callable[..., Any]

#: Microseconds that a rounding formatter would carry into the next millisecond.
START = datetime(2026, 12, 2, 7, 54, 16, 123999, tzinfo=UTC)


def _fire(journal: Journal, request_factory: Callable[..., TransitionRequest]) -> Fire:
    def fire(slot_id: str, trigger: Trigger, **kwargs: Any) -> None:
        journal.apply(request_factory(slot_id, trigger, **kwargs))

    return fire


def _query(journal: Journal, sql: str) -> list[dict[str, Any]]:
    with journal.engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql)).mappings()]


def test_times_are_iso_utc_with_milliseconds_cut_and_z(
    open_journal: Callable[..., Journal], request_factory: Callable[..., TransitionRequest]
) -> None:
    """.123999 is shown as .123 (cut, not rounded), with a Z, on either database; the
    time a slot spent in the state it left is exact to the microsecond."""
    clock = FakeClock(START)
    journal = open_journal(clock=clock)
    fire = _fire(journal, request_factory)
    fire("s1", Trigger.receive)
    clock.advance(1.000002)  # to .124001
    fire("s1", Trigger.dispatch)
    rows = _query(journal, "SELECT recorded_at, in_state_from_s FROM slot_timeline ORDER BY seq")
    assert rows == [
        {"recorded_at": "2026-12-02T07:54:16.123Z", "in_state_from_s": None},
        {"recorded_at": "2026-12-02T07:54:17.124Z", "in_state_from_s": 1.000002},
    ]
    (active,) = _query(journal, "SELECT received_at, started_at, updated_at FROM active_slots")
    assert active == {
        "received_at": "2026-12-02T07:54:16.123Z",
        "started_at": None,
        "updated_at": "2026-12-02T07:54:17.124Z",
    }


def test_slot_history_sums_each_state_per_attempt(
    open_journal: Callable[..., Journal], request_factory: Callable[..., TransitionRequest]
) -> None:
    """Pending 2 s, dispatching 0.5 s, in progress 10 + 4 s, paused 30 s, total 46.5 s;
    the second attempt is its own row, live, so without a total."""
    clock = FakeClock(START)
    journal = open_journal(clock=clock)
    fire = _fire(journal, request_factory)
    steps = [
        (0, Trigger.receive),
        (2, Trigger.dispatch),
        (0.5, Trigger.woke),
        (10, Trigger.pause),
        (30, Trigger.resume),
        (4, Trigger.complete),
        (100, Trigger.receive),  # attempt 2
        (1, Trigger.dispatch),
    ]
    for seconds, trigger in steps:
        clock.advance(seconds)
        fire("s1", trigger)
    first, second = _query(journal, "SELECT * FROM slot_history ORDER BY attempt")
    assert first["state"] == "completed"
    assert (first["events"], first["dispatches"]) == (6, 1)
    assert (first["received_at"], first["ended_at"]) == (
        "2026-12-02T07:54:16.123Z",
        "2026-12-02T07:55:02.623Z",
    )
    durations = ("pending_s", "dispatching_s", "in_progress_s", "paused_s", "total_s")
    assert [first[d] for d in durations] == [2, 0.5, 14, 30, 46.5]
    assert (second["attempt"], second["state"], second["ended_at"]) == (2, "dispatching", None)
    assert [second[d] for d in durations] == [1, 0, 0, 0, None]


def test_outbox_status_names_each_fate(
    open_journal: Callable[..., Journal], request_factory: Callable[..., TransitionRequest]
) -> None:
    """A delivered row has its delivery time; a dead one its dead_at; the rest pend."""
    clock = FakeClock(START)
    journal = open_journal(clock=clock)
    fire = _fire(journal, request_factory)
    for trigger in (Trigger.receive, Trigger.dispatch, Trigger.woke, Trigger.pause):
        fire("s1", trigger)
    fire("s2", Trigger.receive, agent_id="agent-2")
    fire("s2", Trigger.abort, agent_id="agent-2")
    # One row per slot is due at a time (a slot's updates go out in order).
    woke, aborted = journal.due_outbox(clock.now, limit=10)
    clock.advance(2.5)
    journal.mark_delivered(woke.id)
    journal.mark_dead(aborted.id, "422 unknown slot")
    rows = _query(journal, "SELECT * FROM outbox_status ORDER BY id")
    assert [(r["slot_id"], r["status"], r["fate"]) for r in rows] == [
        ("s1", "in_progress", "delivered"),
        ("s1", "paused", "pending"),
        ("s2", "aborted", "dead"),
    ]
    assert [r["delivery_s"] for r in rows] == [2.5, None, None]
    assert rows[0]["delivered_at"] == "2026-12-02T07:54:18.623Z"
    assert rows[2]["dead_at"] == "2026-12-02T07:54:18.623Z"
    assert rows[2]["last_error"] == "422 unknown slot"
    assert {r["agent_id"] for r in rows} == {"agent-1", "agent-2"}


def test_downgrade_to_0004_brings_back_the_old_views(journal: Journal) -> None:
    """0007's downgrade restores 0001's per-event slot_history; upgrading again works."""
    migrate.downgrade(journal.engine, "0004")
    with journal.engine.connect() as conn:
        assert set(inspect(conn).get_view_names()) >= {"slot_history", "active_slots"}
        assert "slot_timeline" not in inspect(conn).get_view_names()
        columns = [c["name"] for c in inspect(conn).get_columns("slot_history")]
    assert columns[:2] == ["seq", "recorded_at"]
    migrate.upgrade(journal.engine)
    with journal.engine.connect() as conn:
        names = set(inspect(conn).get_view_names())
    assert names >= {"slot_timeline", "slot_history", "outbox_status", "active_slots"}
