"""The typed status: the protocol's shape (section 2), times with Z, and a round trip."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from calsched.errors import InvalidInputError
from calsched.model import Slot, SlotState, SlotView, parse
from calsched.status import (
    BackendHealth,
    HistoryEntry,
    LeaseStatus,
    OutboxSummary,
    SchedulerStatus,
    SlotEntry,
)

AT = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)
SLOT = parse(
    Slot,
    {
        "id": "s-18",
        "agent_id": "bob",
        "title": "Daily report",
        "prompt_text": "Write today's report",
        "scheduled_at": "2026-11-27T22:00:00Z",
    },
)


def view(state: SlotState = SlotState.paused, **changes: object) -> SlotView:
    base = SlotView(
        identifier="host-a",
        slot_id="s-18",
        agent_id="bob",
        state=state,
        attempt=2,
        slot=SLOT,
        received_at=AT,
        started_at=AT + timedelta(seconds=1),
        updated_at=AT + timedelta(seconds=2),
        resolved_at=None,
        summary=None,
        reason="lunch",
        last_seq=7,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_slot_entry_is_the_protocols_shape() -> None:
    """The active entry (and a slot answer): slot, state, attempt, times with Z."""
    assert SlotEntry.from_view(view()).to_wire() == {
        "slot": SLOT.to_wire(),
        "state": "paused",
        "attempt": 2,
        "started_at": "2026-11-27T22:00:01Z",
        "last_change": "2026-11-27T22:00:02Z",
        "summary": None,
        "reason": "lunch",
    }
    assert SlotEntry.from_view(view(started_at=None)).to_wire()["started_at"] is None


def test_a_history_entry_names_its_status_and_resolution() -> None:
    """An ended slot: resolved_at from the projection (else its last change)."""
    ended = view(SlotState.completed, resolved_at=AT + timedelta(minutes=5), summary="sent")
    assert HistoryEntry.from_view(ended).to_wire() == {
        "slot_id": "s-18",
        "agent_id": "bob",
        "status": "completed",
        "resolved_at": "2026-11-27T22:05:00Z",
        "summary": "sent",
        "reason": "lunch",
    }
    fallback = HistoryEntry.from_view(view(SlotState.aborted))
    assert fallback.resolved_at == AT + timedelta(seconds=2)


def full_status() -> SchedulerStatus:
    return SchedulerStatus(
        identifier="host-a",
        last_heartbeat=AT,
        heartbeat_every_s=30,
        backend=BackendHealth(last_ok=AT, last_error="HTTP 503", key_refused=True),
        active=[SlotEntry.from_view(view())],
        history=[HistoryEntry.from_view(view(SlotState.completed))],
        outbox=OutboxSummary(pending=2, dead=1, dead_slots=["s-9"]),
        restart_pending=True,
        lease=LeaseStatus(
            state="held",
            epoch=7,
            host="web-1",
            pid=4242,
            since=AT - timedelta(hours=1),
            renewed_at=AT,
            expires_at=AT + timedelta(seconds=20),
            locked=True,
            renewals=180,
        ),
    )


def test_the_status_has_exactly_the_protocols_keys() -> None:
    """Every key of protocol section 2, with its nested shapes."""
    wire = full_status().to_wire()
    assert set(wire) == {
        "enabled",
        "identifier",
        "last_heartbeat",
        "heartbeat_every_s",
        "backend",
        "active",
        "history",
        "outbox",
        "restart_pending",
        "lease",
    }
    assert wire["last_heartbeat"] == "2026-11-27T22:00:00Z"
    assert wire["backend"] == {
        "last_ok": "2026-11-27T22:00:00Z",
        "last_error": "HTTP 503",
        "key_refused": True,
    }
    assert wire["outbox"] == {"pending": 2, "dead": 1, "dead_slots": ["s-9"]}
    assert wire["enabled"] is True
    assert wire["lease"] == {
        "state": "held",
        "lost": None,
        "epoch": 7,
        "host": "web-1",
        "pid": 4242,
        "since": "2026-11-27T21:00:00Z",
        "renewed_at": "2026-11-27T22:00:00Z",
        "expires_at": "2026-11-27T22:00:20Z",
        "locked": True,
        "renewals": 180,
        "refused_writes": 0,
    }


def test_a_scheduler_without_a_lease_shows_none() -> None:
    """A library user's scheduler runs without a lease: ``lease`` is null."""
    bare = SchedulerStatus(identifier="host-a", heartbeat_every_s=30)
    assert bare.to_wire()["lease"] is None


def test_the_wire_shape_parses_back_to_the_same_status() -> None:
    """What the control API serves, the CLI reads back into the same model."""
    status = full_status()
    assert parse(SchedulerStatus, status.to_wire()) == status


def test_a_status_of_another_shape_is_refused_naming_the_field() -> None:
    """A renamed or mistyped field fails loudly instead of printing None."""
    wire = full_status().to_wire()
    wire["outbox"] = {"pending": "many"}
    with pytest.raises(InvalidInputError, match=r"outbox\.pending"):
        parse(SchedulerStatus, wire)
    del wire["identifier"]
    with pytest.raises(InvalidInputError, match="identifier"):
        parse(SchedulerStatus, wire)
