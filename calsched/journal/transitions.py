"""Transitions: deciding and writing a batch of them inside a write transaction.

:meth:`Transitions.apply_in` reads the few columns each touched slot needs (never the
stored slot's JSON), decides every request with the shared state machine *before* it
writes anything, then appends the events, the outbox rows and the projection's
:class:`~calsched.journal.replay.Change`, and returns what it did as :class:`Applied`.
Deciding first is what lets the group writer refuse one caller's batch (a
:data:`REFUSALS` error) and still commit its neighbours'.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection

from calsched.errors import AgentBusyError, InvalidTransitionError, SlotNotFoundError
from calsched.journal import statements
from calsched.journal.replay import Change, change, project
from calsched.journal.rows import (
    change_values,
    event_values,
    keyed,
    outbox_values,
    state_of,
    view_values,
    with_seq,
)
from calsched.journal.statements import Statements
from calsched.lifecycle import SLOT_MACHINE
from calsched.model import (
    CURRENT_STATES,
    REPORTED_STATES,
    Actor,
    Event,
    Slot,
    SlotState,
    SlotView,
    Trigger,
)

__all__ = ["REFUSALS", "Applied", "TransitionRequest", "Transitions", "notifies_backend"]

_CURRENT = sorted(s.value for s in CURRENT_STATES)

#: What a transition that does not fit raises, always before it writes anything.
REFUSALS: tuple[type[Exception], ...] = (
    InvalidTransitionError,
    AgentBusyError,
    SlotNotFoundError,
)


@dataclass(frozen=True, slots=True)
class TransitionRequest:
    """A trigger to fire on one slot, with who fires it and why.

    ``slot`` is required for ``receive``; ``target`` for ``reconcile``. ``attempt``, when
    given, fences the request: it fails if the slot has moved on to another attempt.
    """

    slot_id: str
    trigger: Trigger
    actor: Actor
    slot: Slot | None = None
    target: SlotState | None = None
    summary: str | None = None
    reason: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """What a committed batch did: its events in order, and each touched slot after it.

    ``after`` is the projection the journal wrote, computed once: the whole view of a
    slot received in this batch, else the :class:`~calsched.journal.replay.Change` to
    make to the caller's view. The scheduler's live view takes it as it is.
    """

    events: list[Event]
    after: dict[str, SlotView | Change]

    def view(self, slot_id: str, before: SlotView | None) -> SlotView | None:
        """The slot's view after the batch, given its view ``before`` it (``None`` if
        the caller has none: then only a slot received in this batch has a view)."""
        final = self.after.get(slot_id)
        if isinstance(final, Change):
            return final.apply(before) if before is not None else None
        return final if final is not None else before


def notifies_backend(trigger: Trigger, state_to: SlotState) -> bool:
    """Whether a transition gets an outbox row: the backend hears every change to a
    reported state, except a reconcile (that status came from the backend itself)."""
    return state_to in REPORTED_STATES and trigger is not Trigger.reconcile


class Transitions:
    """The write path of one identifier's transitions, on statements compiled once."""

    def __init__(
        self, identifier: str, clock: Callable[[], datetime], sql: Callable[[], Statements]
    ) -> None:
        self.identifier = identifier
        self._clock = clock
        self._statements = sql

    @property
    def _sql(self) -> Statements:
        return self._statements()

    def apply_in(self, conn: Connection, requests: Sequence[TransitionRequest]) -> Applied:
        """Fire ``requests``, all or none, inside the write transaction ``conn`` holds.

        Every refusal (:data:`REFUSALS`) is raised before this writes anything, so the
        group writer can refuse one caller's batch and still commit its neighbours'.
        """
        if not requests:
            return Applied([], {})
        st = self._sql
        now = self._clock()
        stored = {sid: self.load_head(conn, sid) for sid in sorted({r.slot_id for r in requests})}
        # Decide everything first, each request against the ones before it: a refusal
        # writes nothing.
        decided = {sid: h for sid, h in stored.items() if h is not None}
        current = {h.agent_id: sid for sid, h in decided.items() if h.state in CURRENT_STATES}
        drafts: list[Event] = []
        for request in requests:
            event = self._decide(conn, request, decided, current, now)
            decided[request.slot_id] = _Head(event.state_to, event.attempt, event.agent_id)
            if event.state_to in CURRENT_STATES:
                current[event.agent_id] = request.slot_id
            elif current.get(event.agent_id) == request.slot_id:
                del current[event.agent_id]
            drafts.append(event)
        # Then write, projecting each event from the stored columns it carries forward.
        heads = {sid: h for sid, h in stored.items() if h is not None}
        after: dict[str, SlotView | Change] = {}
        appended: list[Event] = []
        for draft in drafts:
            seq = statements.insert_returning_id(conn, st.insert_event, event_values(draft))
            event = with_seq(draft, seq)
            sid = event.slot_id
            if event.kind is Trigger.receive:
                view = project(None, event)
                heads[sid] = _Head(view.state, view.attempt, view.agent_id)
                after[sid] = view
            else:
                head = heads[sid]
                step = change(head.started_at, head.summary, head.reason, event)
                heads[sid] = head._replace(
                    state=step.state,
                    started_at=step.started_at,
                    summary=step.summary,
                    reason=step.reason,
                )
                known = after.get(sid)
                after[sid] = step.apply(known) if isinstance(known, SlotView) else step
            if notifies_backend(event.kind, event.state_to):
                statements.execute(conn, st.insert_outbox, outbox_values(event, seq))
            appended.append(event)
        for sid, final in after.items():
            if isinstance(final, Change):
                key = {"k_identifier": self.identifier, "k_slot_id": sid}
                statements.execute(conn, st.update_slot_state, {**change_values(final), **key})
            elif stored[sid] is None:
                statements.execute(conn, st.insert_slot, view_values(final))
            else:  # a new attempt: the whole row changes
                statements.execute(conn, st.update_slot, keyed(final, view_values(final)))
        return Applied(appended, after)

    def load_head(self, conn: Connection, slot_id: str) -> _Head | None:
        """What a transition needs of one stored slot, locked for this transaction."""
        st = self._sql
        rows = statements.fetch_all(
            conn, st.select_head, {"identifier": self.identifier, "slot_id": slot_id}
        )
        if not rows:
            return None
        state, attempt, agent_id, started_at, summary, reason = rows[0]
        reader = st.head_readers[3]
        return _Head(
            state_of(state),
            int(attempt),
            agent_id,
            reader(started_at) if reader is not None else started_at,
            summary,
            reason,
        )

    def _decide(
        self,
        conn: Connection,
        request: TransitionRequest,
        heads: Mapping[str, _Head],
        current: Mapping[str, str],
        now: datetime,
    ) -> Event:
        head = heads.get(request.slot_id)
        if request.trigger is Trigger.receive:
            if request.slot is None or request.slot.id != request.slot_id:
                raise ValueError("receive needs the slot itself, with the same id")
        elif head is None:
            raise SlotNotFoundError(request.slot_id)
        state = head.state if head else None
        if request.attempt is not None and head is not None and head.attempt != request.attempt:
            raise InvalidTransitionError(
                request.slot_id,
                f"{_label(state)} (attempt {head.attempt}, not {request.attempt})",
                request.trigger.value,
            )
        step = SLOT_MACHINE.fire(
            request.slot_id, state, request.trigger, request.actor, target=request.target
        )
        if request.trigger is Trigger.receive:
            assert request.slot is not None
            agent_id = request.slot.agent_id
            attempt = head.attempt + 1 if head else 1
            payload: dict[str, Any] = {**request.payload, "slot": request.slot.to_wire()}
        else:
            assert head is not None
            agent_id, attempt, payload = head.agent_id, head.attempt, dict(request.payload)
        if step.state_to in CURRENT_STATES and state not in CURRENT_STATES:
            # At most one current slot per agent: the journal enforces it, not only callers.
            busy = self._current_for_agent(conn, agent_id, heads, current, request.slot_id)
            if busy is not None:
                raise AgentBusyError(agent_id, busy)
        return Event(
            event_id=str(uuid.uuid4()),
            identifier=self.identifier,
            slot_id=request.slot_id,
            attempt=attempt,
            agent_id=agent_id,
            kind=request.trigger,
            actor=request.actor,
            state_from=step.state_from,
            state_to=step.state_to,
            recorded_at=now,
            summary=request.summary,
            reason=request.reason,
            payload=payload,
        )

    def _current_for_agent(
        self,
        conn: Connection,
        agent_id: str,
        heads: Mapping[str, _Head],
        current: Mapping[str, str],
        exclude: str,
    ) -> str | None:
        # Slots already touched in this batch are judged by their in-batch state.
        mine = current.get(agent_id)
        if mine is not None and mine != exclude:
            return mine
        values = {
            "identifier": self.identifier,
            "agent_id": agent_id,
            "slot_id": exclude,
            **{f"current_{i}": s for i, s in enumerate(_CURRENT)},
        }
        for (slot_id,) in statements.fetch_all(conn, self._sql.current_of_agent, values):
            if slot_id not in heads:
                return str(slot_id)
        return None


class _Head(NamedTuple):
    """What a transition needs of a slot: its state, attempt and agent to decide, and
    the columns its :class:`~calsched.journal.replay.Change` carries forward."""

    state: SlotState
    attempt: int
    agent_id: str
    started_at: datetime | None = None
    summary: str | None = None
    reason: str | None = None


def _label(state: SlotState | None) -> str:
    return "new" if state is None else state.value
