"""benchmarks.fabricate: a bulk-written journal is the journal calsched would have written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Table, func, select

from benchmarks.fabricate import SUMMARY, fabricate, total_events
from calsched.journal import Journal, TransitionRequest
from calsched.journal.schema import events, outbox, slots
from calsched.model import Actor, Slot, SlotState, Trigger

#: Columns that differ between any two journals by nature: random ids and clock times.
_VARYING = {
    "seq",
    "id",
    "event_seq",
    "last_seq",
    "event_id",
    "idempotency_key",
    "recorded_at",
    "occurred_at",
    "next_try_at",
    "delivered_at",
    "received_at",
    "started_at",
    "updated_at",
    "resolved_at",
    "chain",  # over the ids and times
}


def _rows(journal: Journal, table: Table, order: Any) -> list[dict[str, Any]]:
    with journal.engine.connect() as conn:
        rows = conn.execute(select(table).order_by(*order)).mappings().all()
    # Times and ids vary; whether a time is set does not.
    return [{k: (v is not None if k in _VARYING else v) for k, v in row.items()} for row in rows]


def _lived(journal: Journal, slot_id: str, agent_id: str, *, done: bool) -> None:
    """Drive one slot as the scheduler and an agent would, the backend acknowledging."""
    slot = Slot(id=slot_id, agent_id=agent_id, title=f"slot {slot_id}")
    steps = [
        TransitionRequest(slot_id, Trigger.receive, Actor.scheduler, slot=slot),
        TransitionRequest(slot_id, Trigger.dispatch, Actor.scheduler, attempt=1),
        TransitionRequest(slot_id, Trigger.woke, Actor.scheduler, attempt=1),
    ]
    if done:
        steps.append(
            TransitionRequest(slot_id, Trigger.complete, Actor.agent, summary=SUMMARY, attempt=1)
        )
    for step in steps:
        journal.apply(step)
        for row in journal.outbox_rows(slot_id=slot_id):
            if row.delivered_at is None:
                journal.mark_delivered(row.id)


def test_fabricated_journal_verifies_and_restores_the_active_slots(
    db_url: str, open_journal: Callable[..., Journal]
) -> None:
    """verify() finds nothing; load_active() has every active slot, in progress, own agent."""
    fabricate(db_url, "host-a", active=5, history_events=40, agents=3)
    journal = open_journal("host-a")
    assert journal.verify() == []
    assert journal.verify_chain().broken is None
    active = journal.load_active()
    assert len(active) == 5
    assert {v.state for v in active} == {SlotState.in_progress}
    assert len({v.agent_id for v in active}) == 5
    assert journal.outbox_counts().pending == 0
    with journal.engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(events)).scalar_one()
        times = conn.execute(select(events.c.recorded_at).order_by(events.c.seq)).scalars().all()
    assert count == total_events(active=5, history_events=40) == 55
    assert times == sorted(times)
    assert len(set(times)) == len(times)


def test_fabricated_rows_equal_the_rows_of_a_lived_journal(
    db_url: str, tmp_path: Any, open_journal: Callable[..., Journal]
) -> None:
    """Column by column (ids and times aside), the three tables match Journal.apply's."""
    fabricate(db_url, "host-a", active=1, history_events=4, prefix="fab")
    made = open_journal("host-a")
    lived = open_journal("host-a", url=f"sqlite:///{tmp_path / 'lived.db'}")
    _lived(lived, "fab-h0", "fab-agent-0", done=True)
    _lived(lived, "fab-a0", "fab-live-0", done=False)
    for table, order in (
        (events, [events.c.seq]),
        (outbox, [outbox.c.id]),
        (slots, [slots.c.slot_id]),
    ):
        assert _rows(made, table, order) == _rows(lived, table, order), table.name
    assert made.verify() == []
    assert made.verify_chain().broken is None
    assert [v.slot for v in made.load_active()] == [v.slot for v in lived.load_active()]


def test_fabricating_twice_appends_and_the_journal_writes_on(
    db_url: str, open_journal: Callable[..., Journal]
) -> None:
    """A second prefix appends; the journal's own next write gets a fresh seq."""
    fabricate(db_url, "host-a", active=2, history_events=8, prefix="one")
    fabricate(db_url, "host-a", active=2, history_events=8, prefix="two")
    journal = open_journal("host-a")
    assert len(journal.load_active()) == 4
    event = journal.apply(TransitionRequest("one-a0", Trigger.pause, Actor.agent))
    assert event.seq == 2 * total_events(active=2, history_events=8) + 1
    assert journal.verify() == []
    report = journal.verify_chain()
    assert (report.broken, report.events) == (None, 2 * 14 + 1)


def test_history_events_must_be_whole_slots(sqlite_url: str) -> None:
    """A finished slot has 4 events: another count is refused before anything is written."""
    with pytest.raises(ValueError, match="multiple of 4"):
        fabricate(sqlite_url, "host-a", active=0, history_events=6)
