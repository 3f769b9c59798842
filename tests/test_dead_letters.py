"""calsched.journal.dead_letters: listing, retrying and discarding outbox rows, each action
recorded as the operator's (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from calsched.errors import InvalidInputError, OutboxRowNotFoundError
from calsched.journal import Journal
from calsched.journal.dead_letters import DISCARD, RETRY, DeadLetters, row_wire
from calsched.journal.engine import writing
from calsched.model import Actor, SlotState, SlotView
from tests.conftest import FakeClock

Drive = Callable[..., SlotView]


@pytest.fixture
def setup(
    open_journal: Callable[..., Journal], drive: Drive, clock: FakeClock
) -> tuple[Journal, DeadLetters]:
    """Slot a: a delivered row, then a dead one, then one held behind it; slot b: pending."""
    journal = open_journal(clock=clock)
    drive(journal, "a", SlotState.paused)
    drive(journal, "b", SlotState.in_progress, agent_id="agent-2")
    first, second = journal.outbox_rows(slot_id="a")
    journal.mark_delivered(first.id)
    journal.mark_dead(second.id, "HTTP 422: unknown slot")
    return journal, DeadLetters(journal.engine, journal.identifier, clock=clock)


def test_undelivered_lists_pending_and_dead_rows(setup: tuple[Journal, DeadLetters]) -> None:
    """Oldest first, with the total; --dead keeps only the dead ones; a limit bounds it."""
    journal, letters = setup
    rows, total = letters.undelivered()
    assert [(r.slot_id, r.dead_at is not None) for r in rows] == [("a", True), ("b", False)]
    assert total == 2
    dead, dead_total = letters.undelivered(dead_only=True)
    assert [r.slot_id for r in dead] == ["a"]
    assert dead_total == 1
    some, all_count = letters.undelivered(limit=1)
    assert len(some) == 1
    assert all_count == 2
    assert row_wire(dead[0])["state"] == "dead"
    assert journal.outbox_counts().dead_slots == ("a",)


def test_retry_revives_a_dead_row_and_records_the_operator(
    setup: tuple[Journal, DeadLetters], clock: FakeClock
) -> None:
    """The row is due now; the action row names the operator, the row and its slot."""
    journal, letters = setup
    (dead,), _ = letters.undelivered(dead_only=True)
    now = clock.advance(5)
    with writing(journal.engine, "journal") as conn:
        assert letters.retry_in(conn, dead.id, Actor.operator) == [dead.id]
    assert [r.id for r in journal.due_outbox(now)] == [dead.id, *_ids(journal, "b")]
    (action,) = letters.actions()
    assert (action.action, action.actor, action.outbox_id, action.slot_id) == (
        RETRY,
        Actor.operator,
        dead.id,
        "a",
    )
    assert journal.outbox_counts().dead == 0


def test_retry_all_dead_takes_only_dead_rows(setup: tuple[Journal, DeadLetters]) -> None:
    """--all-dead: every dead row, none of the pending ones; none dead is an empty list."""
    journal, letters = setup
    (dead,), _ = letters.undelivered(dead_only=True)
    with writing(journal.engine, "journal") as conn:
        assert letters.retry_in(conn, None, Actor.operator) == [dead.id]
    with writing(journal.engine, "journal") as conn:
        assert letters.retry_in(conn, None, Actor.operator) == []


def test_discard_settles_the_row_and_unblocks_the_slot(
    setup: tuple[Journal, DeadLetters], clock: FakeClock
) -> None:
    """Discarded: delivered_at beside dead_at, the reason kept; a repeat is refused."""
    journal, letters = setup
    (dead,), _ = letters.undelivered(dead_only=True)
    with writing(journal.engine, "journal") as conn:
        letters.discard_in(conn, dead.id, "slot deleted in the calendar", Actor.operator)
    after = next(r for r in journal.outbox_rows(slot_id="a") if r.id == dead.id)
    assert after.dead_at is not None
    assert after.delivered_at is not None
    assert after.last_error == "discarded by the operator: slot deleted in the calendar"
    assert journal.outbox_counts().dead == 0
    (action,) = letters.actions()
    assert (action.action, action.actor, action.reason) == (
        DISCARD,
        Actor.operator,
        "slot deleted in the calendar",
    )
    with writing(journal.engine, "journal") as conn, pytest.raises(OutboxRowNotFoundError) as e:
        letters.discard_in(conn, dead.id, "again", Actor.operator)
    assert e.value.settled


def test_a_dead_row_overtaken_by_a_delivered_one_is_not_retried(
    setup: tuple[Journal, DeadLetters],
) -> None:
    """The backend heard a later status of the slot: retrying would send an older one."""
    journal, letters = setup
    journal.apply(_resume("a"))
    later = journal.outbox_rows(slot_id="a")[-1]
    journal.mark_delivered(later.id)
    (dead,), _ = letters.undelivered(dead_only=True)
    refused = pytest.raises(InvalidInputError, match="older one after it")
    with refused, writing(journal.engine, "journal") as conn:
        letters.retry_in(conn, dead.id, Actor.operator)
    with writing(journal.engine, "journal") as conn:
        assert letters.retry_in(conn, None, Actor.operator) == []
    assert letters.actions() == []


def test_refusals_change_nothing(setup: tuple[Journal, DeadLetters]) -> None:
    """An unknown row, a delivered row or an empty reason: refused, nothing recorded."""
    journal, letters = setup
    delivered = journal.outbox_rows(slot_id="a")[0]
    for row_id, reason, error in (
        (999_999, "x", OutboxRowNotFoundError),
        (delivered.id, "x", OutboxRowNotFoundError),
        (delivered.id, " ", InvalidInputError),
    ):
        with pytest.raises(error), writing(journal.engine, "journal") as conn:
            letters.discard_in(conn, row_id, reason, Actor.operator)
    with pytest.raises(OutboxRowNotFoundError), writing(journal.engine, "journal") as conn:
        letters.retry_in(conn, 999_999, Actor.operator)
    assert letters.actions() == []


def _ids(journal: Journal, slot_id: str) -> list[int]:
    return [r.id for r in journal.outbox_rows(slot_id=slot_id) if r.delivered_at is None]


def _resume(slot_id: str):  # type: ignore[no-untyped-def]
    from calsched.journal import TransitionRequest
    from calsched.model import Trigger

    return TransitionRequest(slot_id, Trigger.resume, Actor.agent)
