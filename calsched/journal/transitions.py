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
from calsched.journal.chain import ChainHead, link
from calsched.journal.replay import Change, change, project
from calsched.journal.rows import (
    change_values,
    event_values,
    keyed,
    outbox_values,
    state_of,
    view_values,
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
#: The triggers that can make a slot current (and so its agent busy).
_MAY_START = frozenset({Trigger.dispatch, Trigger.reconcile})

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
        self,
        identifier: str,
        clock: Callable[[], datetime],
        sql: Callable[[], Statements],
        head: ChainHead,
    ) -> None:
        self.identifier = identifier
        self._clock = clock
        self._statements = sql
        self._head_chain = head

    @property
    def _sql(self) -> Statements:
        return self._statements()

    def apply_in(self, conn: Connection, requests: Sequence[TransitionRequest]) -> Applied:
        """Fire ``requests``, all or none, inside the write transaction ``conn`` holds.

        Every refusal (:data:`REFUSALS`) is raised before this writes anything, so the
        group writer can refuse one caller's batch and still commit its neighbours'.
        """
        return self._apply(conn, requests, tolerant=False)[0]

    def apply_each_in(
        self, conn: Connection, requests: Sequence[TransitionRequest]
    ) -> tuple[Applied, list[Exception | None]]:
        """Fire each of ``requests`` on its own terms, in one write pass.

        A request that does not fit is skipped, its refusal (:data:`REFUSALS`) in its
        place in the returned list (``None`` where the request was applied); each is
        decided against the ones applied before it, so the outcome is that of one
        transaction per request, in order. Many callers' unrelated requests (wake
        outcomes ending together) share one set of statements this way.
        """
        return self._apply(conn, requests, tolerant=True)

    def _apply(
        self, conn: Connection, requests: Sequence[TransitionRequest], *, tolerant: bool
    ) -> tuple[Applied, list[Exception | None]]:
        if not requests:
            return Applied([], {}), []
        now = self._clock()
        stored = self.load_heads(conn, sorted({r.slot_id for r in requests}))
        # Decide everything first, each request against the ones before it: a refusal
        # writes nothing.
        decided = dict(stored)
        current = {h.agent_id: sid for sid, h in decided.items() if h.state in CURRENT_STATES}
        # The agents a dispatch or a reconcile may make busy: their current slots in one
        # query, not one per request.
        busy = self._current_of_agents(
            conn,
            sorted(
                {
                    stored[r.slot_id].agent_id
                    for r in requests
                    if r.trigger in _MAY_START and r.slot_id in stored
                }
            ),
        )
        drafts: list[dict[str, Any]] = []
        outcomes: list[Exception | None] = []
        for request in requests:
            try:
                draft = self._decide(conn, request, decided, current, busy, now)
            except REFUSALS as exc:
                if not tolerant:
                    raise
                outcomes.append(exc)
                continue
            outcomes.append(None)
            draft["event_id"] = str(uuid.uuid4())
            state_to, agent_id = draft["state_to"], draft["agent_id"]
            decided[request.slot_id] = _Head(state_to, draft["attempt"], agent_id)
            if state_to in CURRENT_STATES:
                current[agent_id] = request.slot_id
            elif current.get(agent_id) == request.slot_id:
                del current[agent_id]
            drafts.append(draft)
        return self._write(conn, stored, drafts), outcomes

    def _write(
        self, conn: Connection, stored: Mapping[str, _Head], drafts: Sequence[dict[str, Any]]
    ) -> Applied:
        """Append the decided events, their outbox rows and the projection, each kind of
        row in one driver call; project each event from the columns it carries forward."""
        st = self._sql
        events = self._append(conn, drafts)
        heads = dict(stored)
        after: dict[str, SlotView | Change] = {}
        appended: list[Event] = []
        notices: list[dict[str, Any]] = []
        for event in events:
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
                assert event.seq is not None, "appended"
                notices.append(outbox_values(event, event.seq))
            appended.append(event)
        statements.execute_many(conn, st.insert_outbox, notices)
        changed: list[dict[str, Any]] = []
        inserted: list[dict[str, Any]] = []
        rewritten: list[dict[str, Any]] = []
        for sid, final in after.items():
            if isinstance(final, Change):
                key = {"k_identifier": self.identifier, "k_slot_id": sid}
                changed.append({**change_values(final), **key})
            elif sid not in stored:
                inserted.append(view_values(final))
            else:  # a new attempt: the whole row changes
                rewritten.append(keyed(final, view_values(final)))
        statements.execute_many(conn, st.update_slot_state, changed)
        statements.execute_many(conn, st.insert_slot, inserted)
        statements.execute_many(conn, st.update_slot, rewritten)
        return Applied(appended, after)

    def _append(self, conn: Connection, drafts: Sequence[dict[str, Any]]) -> list[Event]:
        """Insert the drafts' events in order, each chained to the one before it
        (:mod:`calsched.journal.chain`); return them as appended (with their seq)."""
        if not drafts:
            return []
        st = self._sql
        # The seqs come first, even for one event: each event's hash covers its seq.
        if st.lastrowid:
            ((highest,),) = statements.fetch_all(conn, st.reserve_seqs, {})
            first = int(highest or 0) + 1
            seqs = list(range(first, first + len(drafts)))
        else:
            rows = statements.fetch_all(conn, st.reserve_seqs, {"n": len(drafts)})
            # A sequence hands out increasing values: sorted, they follow the drafts'
            # order, so seq order is decision order.
            seqs = sorted(int(seq) for (seq,) in rows)
        head = self._head_chain.previous(conn)
        events: list[Event] = []
        values: list[dict[str, Any]] = []
        for draft, seq in zip(drafts, seqs, strict=True):
            event = Event(**draft, seq=seq)
            row = event_values(event)
            row["seq"] = seq
            head = row["chain"] = link(head, row)
            events.append(event)
            values.append(row)
        statements.execute_many(conn, st.insert_events, values)
        self._head_chain.advanced(conn, head)
        return events

    def load_head(self, conn: Connection, slot_id: str) -> _Head | None:
        """What a transition needs of one stored slot, locked for this transaction."""
        st = self._sql
        rows = statements.fetch_all(
            conn, st.select_head, {"identifier": self.identifier, "slot_id": slot_id}
        )
        return self._head(rows[0]) if rows else None

    def load_heads(self, conn: Connection, slot_ids: Sequence[str]) -> dict[str, _Head]:
        """:meth:`load_head` of many slots (those stored), in one query per chunk."""
        if len(slot_ids) == 1:
            head = self.load_head(conn, slot_ids[0])
            return {slot_ids[0]: head} if head is not None else {}
        st = self._sql
        heads: dict[str, _Head] = {}
        for chunk in statements.padded(slot_ids):
            values = {f"slot_{i}": sid for i, sid in enumerate(chunk)}
            values["identifier"] = self.identifier
            for slot_id, *head in statements.fetch_all(conn, st.select_heads[len(chunk)], values):
                heads[slot_id] = self._head(head)
        return heads

    def _head(self, row: Sequence[Any]) -> _Head:
        state, attempt, agent_id, started_at, summary, reason = row
        reader = self._sql.head_readers[3]
        return _Head(
            state_of(state),
            int(attempt),
            agent_id,
            reader(started_at) if reader is not None else started_at,
            summary,
            reason,
        )

    def _current_of_agents(self, conn: Connection, agents: Sequence[str]) -> dict[str, list[str]]:
        """Each of ``agents``' stored current slots (every agent named has an entry)."""
        found: dict[str, list[str]] = {agent: [] for agent in agents}
        if not agents:
            return found
        st = self._sql
        states = {f"current_{i}": s for i, s in enumerate(_CURRENT)}
        for chunk in statements.padded(agents):
            values = {f"agent_{i}": agent for i, agent in enumerate(chunk)}
            values.update(states, identifier=self.identifier)
            for agent_id, slot_id in statements.fetch_all(
                conn, st.current_of_agents[len(chunk)], values
            ):
                found[agent_id].append(slot_id)
        return found

    def _decide(
        self,
        conn: Connection,
        request: TransitionRequest,
        heads: Mapping[str, _Head],
        current: Mapping[str, str],
        busy: Mapping[str, list[str]],
        now: datetime,
    ) -> dict[str, Any]:
        """The event ``request`` appends (as :class:`Event` fields, but its id and seq),
        judged against ``heads``; raises one of :data:`REFUSALS` if it does not fit."""
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
            taken = self._current_for_agent(conn, agent_id, heads, current, busy, request.slot_id)
            if taken is not None:
                raise AgentBusyError(agent_id, taken)
        return {
            "identifier": self.identifier,
            "slot_id": request.slot_id,
            "attempt": attempt,
            "agent_id": agent_id,
            "kind": request.trigger,
            "actor": request.actor,
            "state_from": step.state_from,
            "state_to": step.state_to,
            "recorded_at": now,
            "summary": request.summary,
            "reason": request.reason,
            "payload": payload,
        }

    def _current_for_agent(
        self,
        conn: Connection,
        agent_id: str,
        heads: Mapping[str, _Head],
        current: Mapping[str, str],
        busy: Mapping[str, list[str]],
        exclude: str,
    ) -> str | None:
        # Slots already touched in this batch are judged by their in-batch state.
        mine = current.get(agent_id)
        if mine is not None and mine != exclude:
            return mine
        stored = busy.get(agent_id)
        if stored is None:  # not read ahead (a receive's agent): ask now
            stored = self._current_of_agents(conn, [agent_id])[agent_id]
        for slot_id in stored:
            if slot_id != exclude and slot_id not in heads:
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
