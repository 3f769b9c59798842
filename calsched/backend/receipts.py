"""The local calendar's status receipts: one row of ``calendar_receipts`` per accepted
status update, keyed by its ``Idempotency-Key``.

A receipt is what makes :meth:`~calsched.backend.calendar.LocalCalendar.record_status`
idempotent: a replayed key finds the first call's receipt and writes nothing. These
functions run inside the calendar's own transaction (``…_in(conn, …)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, insert, select

from calsched.journal.schema import calendar_receipts
from calsched.model import SlotState, SlotUpdate, format_time

__all__ = ["KEY_MAX", "Receipt", "StatusOutcome"]

KEY_MAX = 128  # calendar_receipts.idempotency_key is String(128)


@dataclass(frozen=True, slots=True)
class Receipt:
    """One accepted status update (a row of ``calendar_receipts``)."""

    idempotency_key: str
    slot_id: str
    identifier: str
    status: SlotState
    attempt: int
    body: Mapping[str, Any]
    received_at: datetime

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready dict; also the reference backend's answer to the status post."""
        return {
            "idempotency_key": self.idempotency_key,
            "slot_id": self.slot_id,
            "identifier": self.identifier,
            "status": self.status.value,
            "attempt": self.attempt,
            "body": dict(self.body),
            "received_at": format_time(self.received_at),
        }


@dataclass(frozen=True, slots=True)
class StatusOutcome:
    """What :meth:`~calsched.backend.calendar.LocalCalendar.record_status` did.

    ``replayed`` is true when the key had been seen: nothing was written, and ``receipt``
    is the one recorded the first time. ``applied`` is false for a stale attempt's update
    that was acknowledged without changing the slot.
    """

    receipt: Receipt
    replayed: bool
    applied: bool


def _receipt_from(row: RowMapping) -> Receipt:
    return Receipt(
        idempotency_key=row["idempotency_key"],
        slot_id=row["slot_id"],
        identifier=row["identifier"],
        status=SlotState(row["status"]),
        attempt=row["attempt"],
        body=dict(row["body"] or {}),
        received_at=row["received_at"],
    )


def find_receipt_in(conn: Connection, idempotency_key: str) -> Receipt | None:
    """The receipt recorded under ``idempotency_key``, if any."""
    query = select(calendar_receipts).where(calendar_receipts.c.idempotency_key == idempotency_key)
    row = conn.execute(query).mappings().first()
    return None if row is None else _receipt_from(row)


def insert_receipt_in(
    conn: Connection, idempotency_key: str, slot_id: str, update: SlotUpdate, at: datetime
) -> Receipt:
    """Record ``update`` for ``slot_id`` under ``idempotency_key``; the receipt written."""
    body = update.to_wire()
    conn.execute(
        insert(calendar_receipts).values(
            idempotency_key=idempotency_key,
            slot_id=slot_id,
            identifier=update.identifier,
            status=update.status.value,
            attempt=update.attempt,
            body=body,
            received_at=at,
        )
    )
    return Receipt(
        idempotency_key=idempotency_key,
        slot_id=slot_id,
        identifier=update.identifier,
        status=update.status,
        attempt=update.attempt,
        body=body,
        received_at=at,
    )


def receipts_in(conn: Connection, slot_id: str | None) -> list[Receipt]:
    """Every receipt, oldest first; only ``slot_id``'s when given."""
    query = select(calendar_receipts).order_by(
        calendar_receipts.c.received_at, calendar_receipts.c.idempotency_key
    )
    if slot_id is not None:
        query = query.where(calendar_receipts.c.slot_id == slot_id)
    return [_receipt_from(row) for row in conn.execute(query).mappings()]
