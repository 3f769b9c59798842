"""Replay: the projection is a pure fold of the events.

:func:`project` applies one event to a slot's view; the journal uses it on every write and
:func:`fold` uses it over the whole log, so the two cannot drift apart by construction.
:func:`diff` compares a stored projection with the fold, field by field, for ``verify``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace

from calsched.model import TERMINAL_STATES, Event, Slot, SlotView, Trigger, parse

__all__ = ["Mismatch", "diff", "fold", "project"]

SlotKey = tuple[str, str]


def project(view: SlotView | None, event: Event) -> SlotView:
    """The slot's view after ``event``; ``view`` is ``None`` before its first ``receive``."""
    assert event.seq is not None, "only appended events are projected"
    if event.kind is Trigger.receive:
        return SlotView(
            identifier=event.identifier,
            slot_id=event.slot_id,
            agent_id=event.agent_id,
            state=event.state_to,
            attempt=event.attempt,
            slot=parse(Slot, event.payload["slot"]),
            received_at=event.recorded_at,
            started_at=None,
            updated_at=event.recorded_at,
            resolved_at=None,
            summary=None,
            reason=None,
            last_seq=event.seq,
        )
    if view is None:
        raise ValueError(
            f"event {event.seq} ({event.kind}) precedes any receive of {event.slot_id!r}"
        )
    terminal = event.state_to in TERMINAL_STATES
    started_at = view.started_at
    if event.kind is Trigger.woke and started_at is None:
        started_at = event.recorded_at
    if event.kind is Trigger.resume:
        reason = None  # a resumed slot is no longer paused for that reason
    else:
        reason = event.reason if event.reason is not None else view.reason
    return replace(
        view,
        state=event.state_to,
        started_at=started_at,
        updated_at=event.recorded_at,
        resolved_at=event.recorded_at if terminal else None,
        summary=event.summary if event.summary is not None else view.summary,
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
