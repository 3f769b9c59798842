"""Replay: the projection is a pure fold of the events.

:func:`project` applies one event to a slot's view; the journal uses it on every write and
:func:`fold` uses it over the whole log, so the two cannot drift apart by construction.

``verify`` reads the whole log, so it folds plain rows instead (:func:`fold_rows`: driver
values, no object per event, nothing decoded) and compares them with the stored rows as
plain values (:func:`drifted`); :data:`PLAIN_EVENT_COLUMNS` and :data:`PLAIN_SLOT_COLUMNS`
are what it selects. Only the slots that differ there are folded again with
:func:`project` and compared field by field by :func:`diff`, so a report always speaks in
typed values. :func:`fold_rows` spells out :func:`project`'s rules on plain values;
``tests/test_replay.py`` proves the two folds equal, on the journal's own logs and on
random ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Text, case, type_coerce

from calsched.journal.schema import events, slots
from calsched.model import TERMINAL_STATES, Event, Slot, SlotState, SlotView, Trigger

__all__ = [
    "PLAIN_EVENT_COLUMNS",
    "PLAIN_FIELDS",
    "PLAIN_SLOT_COLUMNS",
    "Change",
    "Mismatch",
    "change",
    "diff",
    "drifted",
    "fold",
    "fold_rows",
    "project",
]

SlotKey = tuple[str, str]

#: A plain view, as :func:`fold_rows` builds it and the ``slots`` table's columns read.
PLAIN_FIELDS = (
    "slot_id",
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


# What verify reads: times and JSON as the driver returns them, with no type processing.
# Only a receive's agent id and payload are folded: other rows leave them NULL, unread.
_RECEIVED = events.c.kind == Trigger.receive.value
#: The columns :func:`fold_rows` takes, in its order (filter and order by ``seq``).
PLAIN_EVENT_COLUMNS = (
    events.c.seq,
    events.c.slot_id,
    events.c.attempt,
    case((_RECEIVED, events.c.agent_id)),
    events.c.kind,
    events.c.state_to,
    events.c.summary,
    events.c.reason,
    case((_RECEIVED, type_coerce(events.c.payload, Text))),
    type_coerce(events.c.recorded_at, Text),
)
#: The ``slots`` columns :func:`drifted` compares, as :data:`PLAIN_FIELDS`.
PLAIN_SLOT_COLUMNS = tuple(
    type_coerce(slots.c[name], Text)
    if name in {"slot", "received_at", "started_at", "updated_at", "resolved_at"}
    else slots.c[name]
    for name in PLAIN_FIELDS
)


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
    return change(view.started_at, view.summary, view.reason, event).apply(view)


@dataclass(frozen=True, slots=True)
class Change:
    """What an event other than ``receive`` changes in a slot's view.

    The journal's write path computes it once per transition from the few columns it
    reads (it never decodes the stored slot), writes it to the ``slots`` row, and hands it
    to the scheduler, whose live view applies it.
    """

    state: SlotState
    started_at: datetime | None
    updated_at: datetime
    resolved_at: datetime | None
    summary: str | None
    reason: str | None
    last_seq: int

    def apply(self, view: SlotView) -> SlotView:
        """``view`` with this change made."""
        # Built field by field, not with dataclasses.replace: the live view applies one
        # of these per transition, and replace's introspection cost more than the rest.
        return SlotView(
            identifier=view.identifier,
            slot_id=view.slot_id,
            agent_id=view.agent_id,
            state=self.state,
            attempt=view.attempt,
            slot=view.slot,
            received_at=view.received_at,
            started_at=self.started_at,
            updated_at=self.updated_at,
            resolved_at=self.resolved_at,
            summary=self.summary,
            reason=self.reason,
            last_seq=self.last_seq,
        )


def change(
    started_at: datetime | None, summary: str | None, reason: str | None, event: Event
) -> Change:
    """The change ``event`` makes to a view with these ``started_at``, ``summary`` and
    ``reason``: the one rule :func:`project` and the journal's write path share."""
    assert event.seq is not None, "only appended events are projected"
    if event.kind is Trigger.woke and started_at is None:
        started_at = event.recorded_at
    if event.kind is Trigger.resume:
        reason = None  # a resumed slot is no longer paused for that reason
    elif event.reason is not None:
        reason = event.reason
    return Change(
        state=event.state_to,
        started_at=started_at,
        updated_at=event.recorded_at,
        resolved_at=event.recorded_at if event.state_to in TERMINAL_STATES else None,
        summary=event.summary if event.summary is not None else summary,
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


def _decoded(raw: Any) -> Any:
    # SQLite hands JSON back as text; a driver that decodes JSON hands back the value.
    return json.loads(raw) if isinstance(raw, str | bytes) else raw


_RECEIVE, _WOKE, _RESUME = Trigger.receive.value, Trigger.woke.value, Trigger.resume.value
_TERMINAL = frozenset(s.value for s in TERMINAL_STATES)
_SLOT_PREFIX = '{"slot": '


def fold_rows(rows: Iterable[Sequence[Any]]) -> dict[str, tuple[Any, ...]]:
    """Fold plain event rows of one identifier, in ``seq`` order, into plain views.

    Each row is ``(seq, slot_id, attempt, agent_id, kind, state_to, summary, reason,
    payload, recorded_at)`` as the driver returns them (:data:`PLAIN_EVENT_COLUMNS`);
    each view is a tuple of :data:`PLAIN_FIELDS` values, keyed by slot id, its ``slot``
    the JSON text of the slot cut out of the receive's payload where it can be (see
    :func:`_slot_of`), else the decoded slot.

    The same rules as :func:`project`, written out on plain values because this loop runs
    once per event of the whole log; ``tests/test_replay.py`` proves the two folds equal.
    Views are tuples, not lists: a tuple of strings and numbers drops out of the garbage
    collector's sight, which over a million events is a good share of the time.
    """
    views: dict[str, tuple[Any, ...]] = {}
    get = views.get
    for seq, slot_id, attempt, agent_id, kind, state_to, summary, reason, payload, at in rows:
        if kind == _RECEIVE:
            slot = _slot_of(payload)
            views[slot_id] = (
                slot_id,
                agent_id,
                state_to,
                attempt,
                slot,
                at,  # received_at
                None,  # started_at
                at,  # updated_at
                None,  # resolved_at
                None,  # summary
                None,  # reason
                seq,
            )
            continue
        view = get(slot_id)
        if view is None:
            raise _before_receive(seq, kind, slot_id)
        _, agent_id, _, attempt, slot, received_at, started_at, _, _, old_summary, old_reason, _ = (
            view
        )
        if kind == _WOKE and started_at is None:
            started_at = at
        if kind == _RESUME:
            old_reason = None  # a resumed slot is no longer paused for that reason
        elif reason is not None:
            old_reason = reason
        views[slot_id] = (
            slot_id,
            agent_id,
            state_to,
            attempt,
            slot,
            received_at,
            started_at,
            at,  # updated_at
            at if state_to in _TERMINAL else None,  # resolved_at
            old_summary if summary is None else summary,
            old_reason,
            seq,
        )
    return views


def _slot_of(payload: Any) -> Any:
    # A receive's payload is {"slot": <the slot>} (plus any extras the request carried).
    # As text from the same serializer as the stored slot, the slot's own text can be cut
    # out without parsing: equal text then means equal value. Anything else is decoded.
    if isinstance(payload, str) and payload.startswith(_SLOT_PREFIX) and payload[-1] == "}":
        return payload[len(_SLOT_PREFIX) : -1]
    return _decoded(payload)["slot"]


def _same_decoded(have: tuple[Any, ...], want: tuple[Any, ...]) -> bool:
    # The rest equal, and the slot the same value in two spellings (JSON text with its
    # keys in another order, or text against a driver-decoded value)?
    if have[:4] != want[:4] or have[5:] != want[5:]:
        return False
    try:
        return bool(_decoded(have[4]) == _decoded(want[4]))
    except ValueError:  # not JSON at all: a difference for diff to report
        return False


def drifted(stored: Iterable[Sequence[Any]], folded: dict[str, tuple[Any, ...]]) -> set[str]:
    """Slot ids whose stored row is not the plain fold, or exists on one side only.

    ``stored`` rows hold :data:`PLAIN_FIELDS` as the driver returns them
    (:data:`PLAIN_SLOT_COLUMNS`); ``folded`` is :func:`fold_rows`'s result, used up (each
    view is taken out as its row is matched). Equal driver values make equal typed
    values, so a slot not listed here has no mismatch.
    """
    out: set[str] = set()
    take = folded.pop
    for row in stored:
        have = tuple(row)  # as a tuple: a driver row's own == may be slow
        want = take(have[0], None)
        if want is None or (have != want and not _same_decoded(have, want)):
            out.add(have[0])
    out.update(folded)  # folded but never stored
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
