"""Journal values and their rows: what is written for an event, a projection change or an
outbox row, and what a row read back becomes.

The journal wrote every row it reads back, so reading builds values without validation:
enum members come from dicts, and equal strings and times are shared, since the live view
holds one :class:`~calsched.model.SlotView` per active slot.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping

from calsched.journal.replay import Change
from calsched.model import Actor, Event, Slot, SlotState, SlotView, Trigger

__all__ = [
    "OutboxCounts",
    "OutboxRow",
    "change_values",
    "event_from_row",
    "event_values",
    "keyed",
    "outbox_from_row",
    "outbox_values",
    "state_of",
    "view_from_row",
    "view_values",
    "with_seq",
]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One state change waiting to be told to the backend."""

    id: int
    event_seq: int
    idempotency_key: str
    identifier: str
    slot_id: str
    attempt: int
    status: SlotState
    summary: str | None
    reason: str | None
    occurred_at: datetime
    tries: int
    next_try_at: datetime
    last_error: str | None
    delivered_at: datetime | None
    dead_at: datetime | None


@dataclass(frozen=True, slots=True)
class OutboxCounts:
    """How many outbox rows wait for delivery, and how many are dead-lettered."""

    pending: int
    dead: int
    #: The slots of the oldest dead rows, by id (at most ``outbox.DEAD_SLOTS_SHOWN``).
    dead_slots: tuple[str, ...] = ()


def event_values(event: Event) -> dict[str, Any]:
    """The ``events`` row of ``event``, without ``seq`` and ``chain`` (the append adds both)."""
    return {
        "event_id": event.event_id,
        "identifier": event.identifier,
        "slot_id": event.slot_id,
        "attempt": event.attempt,
        "agent_id": event.agent_id,
        "kind": event.kind.value,
        "actor": event.actor.value,
        "state_from": event.state_from.value if event.state_from else None,
        "state_to": event.state_to.value,
        "summary": event.summary,
        "reason": event.reason,
        "payload": dict(event.payload),
        "recorded_at": event.recorded_at,
    }


def outbox_values(event: Event, seq: int) -> dict[str, Any]:
    """The ``outbox`` row telling the backend of ``event`` (appended as ``seq``)."""
    return {
        "event_seq": seq,
        "idempotency_key": event.event_id,
        "identifier": event.identifier,
        "slot_id": event.slot_id,
        "attempt": event.attempt,
        "status": event.state_to.value,
        "summary": event.summary,
        "reason": event.reason,
        "occurred_at": event.recorded_at,
        "tries": 0,
        "next_try_at": event.recorded_at,
        "last_error": None,
        "delivered_at": None,
        "dead_at": None,
    }


def change_values(step: Change) -> dict[str, Any]:
    """The ``slots`` columns a :class:`Change` sets."""
    return {
        "state": step.state.value,
        "started_at": step.started_at,
        "updated_at": step.updated_at,
        "resolved_at": step.resolved_at,
        "summary": step.summary,
        "reason": step.reason,
        "last_seq": step.last_seq,
    }


def keyed(view: SlotView, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the key of ``view``'s row, for an update."""
    return {**values, "k_identifier": view.identifier, "k_slot_id": view.slot_id}


def with_seq(event: Event, seq: int) -> Event:
    """``event`` with the ``seq`` the database gave it."""
    return replace(event, seq=int(seq))


def view_values(view: SlotView) -> dict[str, Any]:
    """The whole ``slots`` row of ``view``."""
    return {
        "identifier": view.identifier,
        "slot_id": view.slot_id,
        "agent_id": view.agent_id,
        "state": view.state.value,
        "attempt": view.attempt,
        "slot": view.slot.to_wire(),
        "received_at": view.received_at,
        "started_at": view.started_at,
        "updated_at": view.updated_at,
        "resolved_at": view.resolved_at,
        "summary": view.summary,
        "reason": view.reason,
        "last_seq": view.last_seq,
    }


# Enum members by value: a dict lookup, cheaper per row than calling the enum.
_STATE: dict[str | None, SlotState | None] = {s.value: s for s in SlotState}
_STATE[None] = None


def state_of(value: str) -> SlotState:
    """The state a stored value names."""
    state = _STATE[value]
    assert state is not None
    return state


_TRIGGER = {t.value: t for t in Trigger}
_ACTOR = {a.value: a for a in Actor}


def view_from_row(row: Mapping[Any, Any]) -> SlotView:
    """The :class:`SlotView` a ``slots`` row holds."""
    # The journal wrote this row itself: no validation. The live view holds one of these
    # per active slot, so equal strings and times are shared rather than held twice.
    slot = Slot.from_stored(row["slot"])
    slot_id, agent_id = row["slot_id"], row["agent_id"]
    started_at, updated_at, resolved_at = row["started_at"], row["updated_at"], row["resolved_at"]
    if updated_at == started_at:
        updated_at = started_at
    if resolved_at is not None and resolved_at == updated_at:
        resolved_at = updated_at
    return SlotView(
        identifier=sys.intern(row["identifier"]),
        slot_id=slot.id if slot.id == slot_id else slot_id,
        agent_id=slot.agent_id if slot.agent_id == agent_id else agent_id,
        state=_STATE[row["state"]],  # type: ignore[arg-type]
        attempt=int(row["attempt"]),
        slot=slot,
        received_at=row["received_at"],
        started_at=started_at,
        updated_at=updated_at,
        resolved_at=resolved_at,
        summary=row["summary"],
        reason=row["reason"],
        last_seq=int(row["last_seq"]),
    )


def event_from_row(row: RowMapping) -> Event:
    """The :class:`Event` an ``events`` row holds."""
    return Event(
        event_id=row["event_id"],
        identifier=row["identifier"],
        slot_id=row["slot_id"],
        attempt=int(row["attempt"]),
        agent_id=row["agent_id"],
        kind=_TRIGGER[row["kind"]],
        actor=_ACTOR[row["actor"]],
        state_from=_STATE[row["state_from"]],
        state_to=_STATE[row["state_to"]],  # type: ignore[arg-type]
        recorded_at=row["recorded_at"],
        summary=row["summary"],
        reason=row["reason"],
        payload=row["payload"],
        seq=int(row["seq"]),
    )


def outbox_from_row(row: RowMapping) -> OutboxRow:
    """The :class:`OutboxRow` an ``outbox`` row holds."""
    return OutboxRow(
        id=int(row["id"]),
        event_seq=int(row["event_seq"]),
        idempotency_key=row["idempotency_key"],
        identifier=row["identifier"],
        slot_id=row["slot_id"],
        attempt=int(row["attempt"]),
        status=_STATE[row["status"]],  # type: ignore[arg-type]
        summary=row["summary"],
        reason=row["reason"],
        occurred_at=row["occurred_at"],
        tries=int(row["tries"]),
        next_try_at=row["next_try_at"],
        last_error=row["last_error"],
        delivered_at=row["delivered_at"],
        dead_at=row["dead_at"],
    )
