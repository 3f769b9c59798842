"""LocalCalendar: slots, firing on heartbeats, idempotent status receipts, the 409 rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from calsched.backend.calendar import CalendarStatus, LocalCalendar
from calsched.errors import (
    BackendConflictError,
    InvalidInputError,
    SlotNotFoundError,
)
from calsched.journal import Journal
from calsched.model import SlotState, SlotUpdate

T0 = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)


@pytest.fixture
def calendar(journal: Journal, clock: Any) -> LocalCalendar:
    """A calendar in the migrated test database, on the fake clock (22:00Z)."""
    return LocalCalendar(journal.engine, clock=clock)


def update(
    status: SlotState = SlotState.in_progress,
    attempt: int = 1,
    *,
    identifier: str = "host-a",
    summary: str | None = None,
    reason: str | None = None,
) -> SlotUpdate:
    """A status update as a host sends it."""
    return SlotUpdate(
        identifier=identifier,
        status=status,
        attempt=attempt,
        summary=summary,
        reason=reason,
        occurred_at=T0,
    )


def at(minutes: float) -> datetime:
    """T0 plus ``minutes``."""
    return T0 + timedelta(minutes=minutes)


# -- slots ------------------------------------------------------------------------------


def test_add_stores_a_scheduled_slot(calendar: LocalCalendar) -> None:
    """add() stores every field; the slot starts scheduled, attempt 1, no holder."""
    added = calendar.add(
        "s1", "bob", fire_at=at(5), title="Report", prompt_text="go", override_message="now!"
    )
    assert added == calendar.get("s1")
    assert (added.status, added.attempt, added.holder) == (CalendarStatus.scheduled, 1, None)
    assert added.fire_at == at(5)
    assert added.to_slot().wake_message() == "now!"
    assert added.to_wire()["fire_at"] == "2026-11-27T22:05:00Z"


def test_add_defaults_to_now(calendar: LocalCalendar) -> None:
    """Without fire_at, a slot fires at the calendar's current time."""
    assert calendar.add("s1", "bob").fire_at == T0


def test_add_refuses_a_duplicate_id(calendar: LocalCalendar) -> None:
    """A second slot with the same id is invalid input, and the first is unchanged."""
    calendar.add("s1", "bob", title="first")
    with pytest.raises(InvalidInputError, match="already exists"):
        calendar.add("s1", "alice")
    assert calendar.get("s1").title == "first"


@pytest.mark.parametrize(("slot_id", "agent_id"), [("", "bob"), ("s1", ""), ("x" * 257, "bob")])
def test_add_validates_ids(calendar: LocalCalendar, slot_id: str, agent_id: str) -> None:
    """Ids follow the wire rules: non-empty, at most 256 characters."""
    with pytest.raises(InvalidInputError):
        calendar.add(slot_id, agent_id)
    assert calendar.list() == []


def test_get_unknown_slot(calendar: LocalCalendar) -> None:
    """get() of an unknown id raises SlotNotFoundError."""
    with pytest.raises(SlotNotFoundError):
        calendar.get("nope")


def test_list_orders_by_fire_time_and_filters(calendar: LocalCalendar) -> None:
    """list() is ordered by fire_at; a status (or several) filters it."""
    calendar.add("late", "a", fire_at=at(10))
    calendar.add("early", "a", fire_at=at(-10))
    calendar.add("mid", "a", fire_at=at(0))
    calendar.fire_due("host-a")
    assert [s.id for s in calendar.list()] == ["early", "mid", "late"]
    assert [s.id for s in calendar.list("scheduled")] == ["late"]
    assert [s.id for s in calendar.list(CalendarStatus.fired)] == ["early", "mid"]
    assert [s.id for s in calendar.list(["scheduled", "fired"])] == ["early", "mid", "late"]


def test_list_refuses_an_unknown_status(calendar: LocalCalendar) -> None:
    """An unknown status filter is invalid input."""
    with pytest.raises(InvalidInputError):
        calendar.list("done")


# -- firing -------------------------------------------------------------------------------


def test_fire_due_takes_only_scheduled_slots_whose_time_has_come(
    calendar: LocalCalendar,
) -> None:
    """fire_due() fires scheduled slots with fire_at <= now; later ones and others stay."""
    calendar.add("past", "a", fire_at=at(-1))
    calendar.add("now", "a", fire_at=at(0))
    calendar.add("future", "a", fire_at=at(1))
    calendar.add("running", "b", fire_at=at(-2))
    calendar.record_status("running", update(), "k1")
    assert [s.id for s in calendar.fire_due("host-b")] == ["past", "now"]
    assert calendar.get("future").status is CalendarStatus.scheduled
    running = calendar.get("running")
    assert (running.status, running.holder) == (CalendarStatus.in_progress, "host-a")
    assert [s.id for s in calendar.fire_due("host-b", now=at(2))] == ["past", "now", "future"]


def test_fire_due_fires_and_relists_until_a_status_arrives(calendar: LocalCalendar) -> None:
    """A due slot is fired to the beat's host and listed on every beat until it reports."""
    calendar.add("s1", "bob", fire_at=at(-1))
    calendar.add("later", "bob", fire_at=at(30))
    first = calendar.fire_due("host-a")
    assert [(s.id, s.status, s.holder) for s in first] == [("s1", CalendarStatus.fired, "host-a")]
    assert first[0] == calendar.get("s1")
    assert [s.id for s in calendar.fire_due("host-a")] == ["s1"]  # re-listed: crash-safe
    assert calendar.fire_due("host-b") == []  # held by host-a
    calendar.record_status("s1", update(SlotState.in_progress), "k1")
    assert calendar.fire_due("host-a") == []


@pytest.mark.parametrize("status", [SlotState.paused, SlotState.completed, SlotState.aborted])
def test_reported_slots_are_not_listed(calendar: LocalCalendar, status: SlotState) -> None:
    """Once a slot is paused or terminal it is not listed again."""
    calendar.add("s1", "bob")
    calendar.fire_due("host-a")
    calendar.record_status("s1", update(SlotState.in_progress), "k1")
    calendar.record_status("s1", update(status), "k2")
    assert calendar.fire_due("host-a") == []


def test_fire_due_respects_the_limit(calendar: LocalCalendar) -> None:
    """At most ``limit`` slots go into one answer; the rest follow on the next beats."""
    for n in range(5):
        calendar.add(f"s{n}", "bob", fire_at=at(-n))
    first = calendar.fire_due("host-a", limit=3)
    assert len(first) == 3
    assert len(calendar.list("scheduled")) == 2
    for slot in first:
        calendar.record_status(slot.id, update(), f"k-{slot.id}")
    assert len(calendar.fire_due("host-a", limit=3)) == 2


def test_reschedule_fires_again_and_accepts_the_next_attempt(calendar: LocalCalendar) -> None:
    """A rescheduled terminal slot fires again; the host's attempt 2 is accepted."""
    calendar.add("s1", "bob")
    calendar.fire_due("host-a")
    calendar.record_status("s1", update(SlotState.completed), "k1")
    again = calendar.reschedule("s1", fire_at=at(-1))
    assert (again.status, again.attempt, again.holder) == (CalendarStatus.scheduled, 1, None)
    assert [s.id for s in calendar.fire_due("host-a")] == ["s1"]
    calendar.record_status("s1", update(SlotState.in_progress, attempt=2), "k2")
    assert (calendar.get("s1").status, calendar.get("s1").attempt) == (
        CalendarStatus.in_progress,
        2,
    )


def test_reschedule_unknown_slot(calendar: LocalCalendar) -> None:
    """reschedule() of an unknown id raises SlotNotFoundError."""
    with pytest.raises(SlotNotFoundError):
        calendar.reschedule("nope")


# -- status updates -----------------------------------------------------------------------


def test_status_update_is_applied_and_receipted(calendar: LocalCalendar, clock: Any) -> None:
    """An update moves the slot, records its holder and text, and stores one receipt."""
    calendar.add("s1", "bob")
    calendar.fire_due("host-a")
    clock.advance(60)
    outcome = calendar.record_status(
        "s1", update(SlotState.completed, summary="sent", identifier="host-a"), "k1"
    )
    assert (outcome.replayed, outcome.applied) == (False, True)
    held = calendar.get("s1")
    assert (held.status, held.summary, held.holder, held.updated_at) == (
        CalendarStatus.completed,
        "sent",
        "host-a",
        at(1),
    )
    (receipt,) = calendar.receipts()
    assert receipt == outcome.receipt
    assert (receipt.slot_id, receipt.status, receipt.attempt, receipt.received_at) == (
        "s1",
        SlotState.completed,
        1,
        at(1),
    )
    assert receipt.body["summary"] == "sent"


def test_same_key_twice_is_one_receipt_and_the_same_answer(
    calendar: LocalCalendar, clock: Any
) -> None:
    """A replayed idempotency key records nothing and returns the first receipt."""
    calendar.add("s1", "bob")
    first = calendar.record_status("s1", update(SlotState.completed), "k1")
    clock.advance(5)
    second = calendar.record_status("s1", update(SlotState.completed), "k1")
    assert second.replayed is True
    assert second.receipt == first.receipt
    assert len(calendar.receipts()) == 1


def test_a_replay_after_later_news_changes_nothing(calendar: LocalCalendar) -> None:
    """Replaying an old key after a newer update neither conflicts nor rolls the slot back."""
    calendar.add("s1", "bob")
    calendar.record_status("s1", update(SlotState.in_progress), "k1")
    calendar.record_status("s1", update(SlotState.completed), "k2")
    outcome = calendar.record_status("s1", update(SlotState.in_progress), "k1")
    assert outcome.replayed is True
    assert calendar.get("s1").status is CalendarStatus.completed


def test_a_key_reused_for_another_update_is_refused(calendar: LocalCalendar) -> None:
    """The same key with a different status, attempt or slot is invalid input."""
    calendar.add("s1", "bob")
    calendar.add("s2", "bob")
    calendar.record_status("s1", update(SlotState.in_progress), "k1")
    with pytest.raises(InvalidInputError, match="Idempotency-Key"):
        calendar.record_status("s1", update(SlotState.paused), "k1")
    with pytest.raises(InvalidInputError, match="Idempotency-Key"):
        calendar.record_status("s2", update(SlotState.in_progress), "k1")
    assert len(calendar.receipts()) == 1


@pytest.mark.parametrize("key", ["", "k" * 129])
def test_bad_idempotency_keys(calendar: LocalCalendar, key: str) -> None:
    """An empty key or one over 128 characters is invalid input."""
    calendar.add("s1", "bob")
    with pytest.raises(InvalidInputError):
        calendar.record_status("s1", update(), key)


def test_unknown_slot_records_nothing(calendar: LocalCalendar) -> None:
    """An update for an unknown slot raises SlotNotFoundError and stores no receipt."""
    with pytest.raises(SlotNotFoundError):
        calendar.record_status("ghost", update(), "k1")
    assert calendar.receipts() == []


@pytest.mark.parametrize(
    ("held", "incoming"),
    [
        (SlotState.completed, SlotState.aborted),
        (SlotState.aborted, SlotState.completed),
        (SlotState.completed, SlotState.in_progress),
        (SlotState.aborted, SlotState.paused),
    ],
)
def test_conflict_with_a_held_terminal_status(
    calendar: LocalCalendar, held: SlotState, incoming: SlotState
) -> None:
    """Another status for a terminal slot is a conflict carrying the held status."""
    calendar.add("s1", "bob")
    calendar.record_status("s1", update(held, reason="watchdog"), "k1")
    with pytest.raises(BackendConflictError) as caught:
        calendar.record_status("s1", update(incoming), "k2")
    assert (caught.value.status, caught.value.reason) == (held.value, "watchdog")
    assert calendar.get("s1").status.value == held.value
    assert [r.idempotency_key for r in calendar.receipts()] == ["k1"]


def test_conflict_replays_the_same_answer(calendar: LocalCalendar) -> None:
    """Retrying a conflicting update with its key conflicts again, the same way."""
    calendar.add("s1", "bob")
    calendar.record_status("s1", update(SlotState.aborted, reason="late"), "k1")
    for _ in range(2):
        with pytest.raises(BackendConflictError) as caught:
            calendar.record_status("s1", update(SlotState.completed), "k2")
        assert caught.value.status == "aborted"


def test_same_terminal_status_under_another_key_is_acknowledged(
    calendar: LocalCalendar,
) -> None:
    """The held terminal status reported again is acknowledged, not applied twice."""
    calendar.add("s1", "bob")
    calendar.record_status("s1", update(SlotState.completed, summary="first"), "k1")
    outcome = calendar.record_status("s1", update(SlotState.completed, summary="again"), "k2")
    assert (outcome.replayed, outcome.applied) == (False, False)
    assert calendar.get("s1").summary == "first"


def test_higher_attempt_after_terminal_is_a_reattempt(calendar: LocalCalendar) -> None:
    """An update with a higher attempt than held is accepted even after a terminal one."""
    calendar.add("s1", "bob")
    calendar.record_status("s1", update(SlotState.aborted), "k1")
    outcome = calendar.record_status("s1", update(SlotState.in_progress, attempt=2), "k2")
    assert outcome.applied is True
    held = calendar.get("s1")
    assert (held.status, held.attempt) == (CalendarStatus.in_progress, 2)


def test_an_older_attempt_is_acknowledged_but_not_applied(calendar: LocalCalendar) -> None:
    """A late update from an older attempt on a live slot does not move it."""
    calendar.add("s1", "bob")
    calendar.record_status("s1", update(SlotState.in_progress, attempt=2), "k2")
    outcome = calendar.record_status("s1", update(SlotState.completed, attempt=1), "k1")
    assert (outcome.replayed, outcome.applied) == (False, False)
    assert calendar.get("s1").status is CalendarStatus.in_progress
    assert len(calendar.receipts("s1")) == 2


def test_receipts_by_slot_in_arrival_order(calendar: LocalCalendar, clock: Any) -> None:
    """receipts() is oldest first; receipts(slot_id) keeps only that slot's."""
    calendar.add("s1", "bob")
    calendar.add("s2", "bob")
    for slot_id, key in [("s1", "b"), ("s2", "a"), ("s1", "c")]:
        status = SlotState.in_progress if key != "c" else SlotState.paused
        calendar.record_status(slot_id, update(status), key)
        clock.advance(1)
    assert [r.idempotency_key for r in calendar.receipts()] == ["b", "a", "c"]
    assert [r.idempotency_key for r in calendar.receipts("s1")] == ["b", "c"]
    assert calendar.receipts("s3") == []


def test_receipt_wire_shape(calendar: LocalCalendar) -> None:
    """A receipt's wire form has the fields the reference backend answers with."""
    calendar.add("s1", "bob")
    wire = calendar.record_status("s1", update(), "k1").receipt.to_wire()
    assert wire == {
        "idempotency_key": "k1",
        "slot_id": "s1",
        "identifier": "host-a",
        "status": "in_progress",
        "attempt": 1,
        "body": update().to_wire(),
        "received_at": "2026-11-27T22:00:00Z",
    }
