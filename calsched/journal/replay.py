"""Replay: the projection is a pure fold of the events.

:func:`project` applies one event to a slot's view; the journal uses it on every write and
:func:`fold` uses it over the whole log. ``verify`` folds plain rows instead
(:func:`fold_rows`: driver values, no objects per event) and compares them with the stored
rows as plain values (:func:`drifted`); only the slots that differ are folded again with
:func:`project` and compared field by field with :func:`diff`, so a report always speaks
in the typed values. Both folds take each event's effect from :func:`advance`, so they
cannot drift apart; ``tests/test_replay.py`` proves them equal on random logs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from calsched.model import TERMINAL_STATES, Event, Slot, SlotView, Trigger

__all__ = [
    "PLAIN_FIELDS",
    "Mismatch",
    "advance",
    "diff",
    "drifted",
    "fold",
    "fold_rows",
    "project",
]

SlotKey = tuple[str, str]

#: What a plain fold keeps per slot, in the order of the ``slots`` table after its key.
PLAIN_FIELDS = (
    "agent_id",
    "state",
    "attempt",
    "slot",
    "received_at",
    "started_at",
    "updated_at",
    "resolved_at",
    "summary",
    "reason",
    "last_seq",
)
_STARTED, _UPDATED, _RESOLVED, _SUMMARY, _REASON = 5, 6, 7, 8, 9


def advance(
    kind: str,
    state_to: str,
    at: Any,
    started_at: Any,
    summary: str | None,
    reason: str | None,
    new_summary: str | None,
    new_reason: str | None,
) -> tuple[Any, Any, str | None, str | None]:
    """What an event after ``receive`` does to a slot: ``(started_at, resolved_at,
    summary, reason)`` from the view's old values and the event's.

    Works on enums and datetimes as on the plain strings and driver values of a row
    (``Trigger`` and ``SlotState`` are string enums, equal to their values).
    """
    if kind == Trigger.woke and started_at is None:
        started_at = at
    if kind == Trigger.resume:
        reason = None  # a resumed slot is no longer paused for that reason
    elif new_reason is not None:
        reason = new_reason
    if new_summary is not None:
        summary = new_summary
    return started_at, at if state_to in TERMINAL_STATES else None, summary, reason


def _before_receive(seq: object, kind: str, slot_id: str) -> ValueError:
    return ValueError(f"event {seq} ({kind}) precedes any receive of {slot_id!r}")


def project(view: SlotView | None, event: Event) -> SlotView:
    """The slot's view after ``event``; ``view`` is ``None`` before its first ``receive``."""
    assert event.seq is not None, "only appended events are projected"
    if event.kind is Trigger.receive:
        slot = Slot.from_stored(event.payload["slot"])
        return SlotView(
            identifier=event.identifier,
            # The view and its slot share one id string (and agent id) where they agree.
            slot_id=slot.id if slot.id == event.slot_id else event.slot_id,
            agent_id=slot.agent_id if slot.agent_id == event.agent_id else event.agent_id,
            state=event.state_to,
            attempt=event.attempt,
            slot=slot,
            received_at=event.recorded_at,
            started_at=None,
            updated_at=event.recorded_at,
            resolved_at=None,
            summary=None,
            reason=None,
            last_seq=event.seq,
        )
    if view is None:
        raise _before_receive(event.seq, event.kind, event.slot_id)
    started_at, resolved_at, summary, reason = advance(
        event.kind,
        event.state_to,
        event.recorded_at,
        view.started_at,
        view.summary,
        view.reason,
        event.summary,
        event.reason,
    )
    return replace(
        view,
        state=event.state_to,
        started_at=started_at,
        updated_at=event.recorded_at,
        resolved_at=resolved_at,
        summary=summary,
        reason=reason,
        last_seq=event.seq,
    )


def fold(events: Iterable[Event]) -> dict[SlotKey, SlotView]:
    """Fold events (in ``seq`` order) into one view per (identifier, slot_id)."""
    views: dict[SlotKey, SlotView] = {}
    for event in events:
        key = (event.identifier, event.slot_id)
        views[key] = project(views.get(key), event)
    return views


def _slot_value(raw: Any) -> Any:
    # SQLite hands JSON back as text; a driver that decodes JSON hands back the value.
    return json.loads(raw) if isinstance(raw, str | bytes) else raw


def fold_rows(rows: Iterable[Sequence[Any]]) -> dict[str, list[Any]]:
    """Fold plain event rows of one identifier, in ``seq`` order, into plain views.

    Each row is ``(seq, slot_id, attempt, agent_id, kind, state_to, summary, reason,
    payload, recorded_at)`` as the driver returns it; each view is a list of
    :data:`PLAIN_FIELDS` values, keyed by slot id. Only a ``receive``'s payload is decoded.
    """
    views: dict[str, list[Any]] = {}
    get = views.get
    receive = Trigger.receive.value
    for seq, slot_id, attempt, agent_id, kind, state_to, summary, reason, payload, at in rows:
        if kind == receive:
            slot = _slot_value(payload)["slot"]
            views[slot_id] = [
                agent_id,
                state_to,
                attempt,
                slot,
                at,
                None,
                at,
                None,
                None,
                None,
                seq,
            ]
            continue
        view = get(slot_id)
        if view is None:
            raise _before_receive(seq, kind, slot_id)
        view[_STARTED], view[_RESOLVED], view[_SUMMARY], view[_REASON] = advance(
            kind, state_to, at, view[_STARTED], view[_SUMMARY], view[_REASON], summary, reason
        )
        view[1] = state_to
        view[_UPDATED] = at
        view[10] = seq
    return views


def drifted(stored: Iterable[Sequence[Any]], folded: Mapping[str, list[Any]]) -> set[str]:
    """Slot ids whose stored row is not the plain fold, or exists on one side only.

    ``stored`` rows are ``(slot_id, *PLAIN_FIELDS)`` as the driver returns them. Equal
    driver values make equal typed values, so a slot not listed here has no mismatch;
    one listed may still have none (two spellings of one value) and is for :func:`diff`
    to judge.
    """
    out: set[str] = set()
    seen: set[str] = set()
    for row in stored:
        slot_id = row[0]
        seen.add(slot_id)
        want = folded.get(slot_id)
        if want is None:
            out.add(slot_id)
            continue
        have = list(row[1:])
        have[3] = _slot_value(have[3])
        if have != want:
            out.add(slot_id)
    out.update(k for k in folded if k not in seen)
    return out


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One slot whose stored projection differs from the fold of its events."""

    identifier: str
    slot_id: str
    field: str
    stored: object
    folded: object

    def __str__(self) -> str:
        where = f"{self.identifier}/{self.slot_id}: {self.field}"
        return f"{where}: stored {self.stored!r}, events say {self.folded!r}"


_FIELDS = [f.name for f in fields(SlotView)]


def diff(stored: Mapping[SlotKey, SlotView], folded: Mapping[SlotKey, SlotView]) -> list[Mismatch]:
    """Every difference between the stored projection and the fold, missing rows included."""
    out: list[Mismatch] = []
    for key in sorted(set(stored) | set(folded)):
        have, want = stored.get(key), folded.get(key)
        if have is None or want is None:
            out.append(Mismatch(key[0], key[1], "(row)", have is not None, want is not None))
            continue
        for name in _FIELDS:
            a, b = getattr(have, name), getattr(want, name)
            if a != b:
                out.append(Mismatch(key[0], key[1], name, a, b))
    return out
