"""Tests for calsched.scheduler.status_board: the status page and its recent history."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from calsched.journal.store import OutboxCounts
from calsched.model import SlotState
from calsched.scheduler.status_board import StatusBoard
from calsched.settings import SchedulerSettings
from calsched.status import BackendHealth
from tests.control.fakes import _view


def board(history_cap: int = 32, live: list[Any] | None = None) -> StatusBoard:
    """A board over stand-ins for the heartbeat, the live view and the outbox."""
    settings = SchedulerSettings(identifier="host-a", history_cap=history_cap)
    heartbeat = SimpleNamespace(last_sent=None, health=BackendHealth(), restart_pending=False)
    view = SimpleNamespace(sorted=lambda: list(live or []))
    outbox = SimpleNamespace(counts=OutboxCounts(pending=2, dead=1, dead_slots=("s9",)))
    return StatusBoard(settings, heartbeat, view, outbox, None)  # type: ignore[arg-type]


def test_record_shows_newest_first() -> None:
    """Slots that ended are shown newest first."""
    b = board()
    b.record([_view("s1", "alice", SlotState.completed)])
    b.record([_view("s2", "bob", SlotState.aborted)])
    assert [h.slot_id for h in b.status().history] == ["s2", "s1"]


def test_reload_keeps_only_terminal_slots_of_the_journal() -> None:
    """At start the history is the journal's recent terminal slots (given newest first)."""
    b = board()
    b.record([_view("old", "alice", SlotState.completed)])
    b.reload(
        [
            _view("s3", "alice", SlotState.in_progress),
            _view("s2", "bob", SlotState.completed),
            _view("s1", "alice", SlotState.aborted),
        ]
    )
    assert [h.slot_id for h in b.status().history] == ["s2", "s1"]


def test_a_cap_of_zero_keeps_no_history() -> None:
    """``history_cap = 0`` turns the in-memory history off."""
    b = board(history_cap=0)
    b.record([_view("s1", "alice", SlotState.completed)])
    assert b.status().history == []


def test_status_is_built_from_the_pieces() -> None:
    """Identifier, live slots and outbox counts come from the scheduler's pieces."""
    status = board(live=[_view("s1", "alice", SlotState.in_progress)]).status()
    assert status.identifier == "host-a"
    assert [e.slot.id for e in status.active] == ["s1"]
    assert (status.outbox.pending, status.outbox.dead, status.outbox.dead_slots) == (2, 1, ["s9"])
    assert status.lease is None
