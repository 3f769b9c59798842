"""Tests for calsched.backend.receipts: the local calendar's receipts, written and read in
the calendar's transaction (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from calsched.backend.receipts import (
    Receipt,
    find_receipt_in,
    insert_receipt_in,
    receipts_in,
)
from calsched.journal import Journal
from calsched.journal.engine import reading, writing
from calsched.model import SlotState, SlotUpdate

T0 = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)


def update(status: SlotState = SlotState.in_progress, attempt: int = 1) -> SlotUpdate:
    """A status update from host-a."""
    return SlotUpdate(identifier="host-a", status=status, attempt=attempt, occurred_at=T0)


def test_a_written_receipt_is_found_by_its_key(journal: Journal) -> None:
    """What insert_receipt_in returns is what find_receipt_in reads back; no key, no receipt."""
    with writing(journal.engine, "calendar") as conn:
        written = insert_receipt_in(conn, "k1", "s1", update(), T0)
    with reading(journal.engine, "calendar") as conn:
        assert find_receipt_in(conn, "k1") == written
        assert find_receipt_in(conn, "k2") is None
    assert written == Receipt(
        "k1", "s1", "host-a", SlotState.in_progress, 1, update().to_wire(), T0
    )


def test_receipts_in_are_oldest_first_and_filtered_by_slot(journal: Journal) -> None:
    """Receipts come in arrival order; a slot id keeps only that slot's."""
    with writing(journal.engine, "calendar") as conn:
        insert_receipt_in(conn, "k-b", "s2", update(), T0 + timedelta(seconds=2))
        insert_receipt_in(conn, "k-a", "s1", update(), T0 + timedelta(seconds=1))
        insert_receipt_in(conn, "k-c", "s1", update(SlotState.completed), T0 + timedelta(seconds=3))
    with reading(journal.engine, "calendar") as conn:
        assert [r.idempotency_key for r in receipts_in(conn, None)] == ["k-a", "k-b", "k-c"]
        assert [r.status for r in receipts_in(conn, "s1")] == [
            SlotState.in_progress,
            SlotState.completed,
        ]


def test_wire_shape_names_every_field() -> None:
    """A receipt's wire form has the fields the reference backend answers with."""
    receipt = Receipt("k1", "s1", "host-a", SlotState.paused, 2, {"a": 1}, T0)
    assert receipt.to_wire() == {
        "idempotency_key": "k1",
        "slot_id": "s1",
        "identifier": "host-a",
        "status": "paused",
        "attempt": 2,
        "body": {"a": 1},
        "received_at": "2026-11-27T22:00:00Z",
    }
