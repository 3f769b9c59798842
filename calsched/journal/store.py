"""The journal: one transaction per transition, or per batch of transitions.

Every write goes through :meth:`Journal.apply_many`: it reads the slots it touches inside a
``BEGIN IMMEDIATE`` transaction, decides each transition with the shared state machine,
appends the events, updates the ``slots`` projection with :func:`~calsched.journal.replay.project`
and adds an ``outbox`` row for each change the backend must hear, then commits once. An
invalid transition raises before anything is written, and the whole batch rolls back.

Keeping the write path in this one method is deliberate: group commit, failpoints for the
crash harness, and a lease per identifier are changes here, not everywhere.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Engine,
    RowMapping,
    delete,
    func,
    insert,
    select,
    update,
)

from calsched.errors import AgentBusyError, InvalidTransitionError, SlotNotFoundError
from calsched.journal import migrate, statements
from calsched.journal.engine import Synchronous, make_engine, reading, writing
from calsched.journal.replay import (
    PLAIN_EVENT_COLUMNS,
    PLAIN_SLOT_COLUMNS,
    Change,
    Mismatch,
    change,
    diff,
    drifted,
    fold,
    fold_rows,
    project,
)
from calsched.journal.schema import events, outbox, slots
from calsched.journal.statements import Statements
from calsched.lifecycle import SLOT_MACHINE
from calsched.model import (
    ACTIVE_STATES,
    CURRENT_STATES,
    REPORTED_STATES,
    Actor,
    Event,
    Slot,
    SlotState,
    SlotView,
    Trigger,
    utcnow,
)

__all__ = [
    "REFUSALS",
    "Applied",
    "Journal",
    "OutboxCounts",
    "OutboxRow",
    "TransitionRequest",
    "notifies_backend",
]

Clock = Callable[[], datetime]
_ACTIVE = sorted(s.value for s in ACTIVE_STATES)
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


def notifies_backend(trigger: Trigger, state_to: SlotState) -> bool:
    """Whether a transition gets an outbox row: the backend hears every change to a
    reported state, except a reconcile (that status came from the backend itself)."""
    return state_to in REPORTED_STATES and trigger is not Trigger.reconcile


class Journal:
    """The event log of one identifier (one host) in a SQL database.

    Synchronous and thread-safe per call; the scheduler calls it from one thread.
    """

    def __init__(self, engine: Engine, identifier: str, *, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.identifier = identifier
        self._clock = clock

    @classmethod
    def open(
        cls,
        url: str,
        identifier: str,
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout_ms: int = 5000,
        upgrade: bool = False,
        clock: Clock = utcnow,
    ) -> Journal:
        """Connect, check (or with ``upgrade``, migrate) the schema, and return a journal.

        Raises :class:`~calsched.errors.SchemaVersionError` when the schema is not at this
        code's head, and :class:`~calsched.errors.JournalError` when the database cannot
        be reached.
        """
        engine = make_engine(url, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
        try:
            migrate.ensure_schema(engine, upgrade=upgrade)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, identifier, clock=clock)

    @cached_property
    def _sql(self) -> Statements:
        # Compiled on first write, for this engine's dialect.
        return Statements(self.engine.dialect)

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    # -- transactions -------------------------------------------------------------------

    def _write(self) -> AbstractContextManager[Connection]:
        return writing(self.engine, "journal")

    def _read(self) -> AbstractContextManager[Connection]:
        return reading(self.engine, "journal")

    # -- the write path -----------------------------------------------------------------

    def apply(self, request: TransitionRequest) -> Event:
        """Fire one transition in its own transaction; return the appended event."""
        return self.apply_many([request])[0]

    def apply_many(self, requests: Sequence[TransitionRequest]) -> list[Event]:
        """Fire many transitions in one transaction, all or none.

        Raises :class:`InvalidTransitionError`, :class:`SlotNotFoundError` or
        :class:`AgentBusyError` before anything is written.
        """
        if not requests:
            return []
        with self._write() as conn:
            return self.apply_in(conn, requests).events

    def apply_in(self, conn: Connection, requests: Sequence[TransitionRequest]) -> Applied:
        """Fire ``requests``, all or none, inside the write transaction ``conn`` holds.

        Every refusal (:data:`REFUSALS`) is raised before this writes anything, so the
        group writer can refuse one caller's batch and still commit its neighbours'.
        """
        if not requests:
            return Applied([], {})
        st = self._sql
        now = self._clock()
        stored = {sid: self._load_head(conn, sid) for sid in sorted({r.slot_id for r in requests})}
        heads = {sid: h for sid, h in stored.items() if h is not None}
        current = {h.agent_id: sid for sid, h in heads.items() if h.state in CURRENT_STATES}
        drafts: list[Event] = []
        for request in requests:  # decide everything first: a refusal writes nothing
            event = self._decide(conn, request, heads, current, now)
            heads[request.slot_id] = _Head(event.state_to, event.attempt, event.agent_id)
            if event.state_to in CURRENT_STATES:
                current[event.agent_id] = request.slot_id
            elif current.get(event.agent_id) == request.slot_id:
                del current[event.agent_id]
            drafts.append(event)
        heads = {sid: h for sid, h in stored.items() if h is not None}
        after: dict[str, SlotView | Change] = {}
        appended: list[Event] = []
        for draft in drafts:
            seq = statements.insert_returning_id(conn, st.insert_event, _event_values(draft))
            event = _with_seq(draft, seq)
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
                statements.execute(conn, st.insert_outbox, _outbox_values(event, seq))
            appended.append(event)
        for sid, final in after.items():
            if isinstance(final, Change):
                values = {**_change_values(final), "k_identifier": self.identifier}
                statements.execute(conn, st.update_slot_state, {**values, "k_slot_id": sid})
            elif stored[sid] is None:
                statements.execute(conn, st.insert_slot, _view_values(final))
            else:  # a new attempt: the whole row changes
                statements.execute(conn, st.update_slot, _keyed(final, _view_values(final)))
        return Applied(appended, after)

    def _load_head(self, conn: Connection, slot_id: str) -> _Head | None:
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
            _STATE[state],  # type: ignore[arg-type]
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

    def _store_view(self, conn: Connection, view: SlotView, *, exists: bool) -> None:
        values = _view_values(view)
        if exists:
            conn.execute(
                update(slots)
                .where(slots.c.identifier == view.identifier, slots.c.slot_id == view.slot_id)
                .values(values)
            )
        else:
            conn.execute(insert(slots), values)

    # -- reads --------------------------------------------------------------------------

    def _select_views(self, conn: Connection, *where: Any, lock: bool = False) -> list[SlotView]:
        stmt = select(slots).where(slots.c.identifier == self.identifier, *where)
        if lock:
            stmt = stmt.with_for_update()
        return [_view_from_row(row) for row in conn.execute(stmt).mappings()]

    def get(self, slot_id: str) -> SlotView | None:
        """The slot's projection, or ``None`` if the journal never received it."""
        with self._read() as conn:
            found = self._select_views(conn, slots.c.slot_id == slot_id)
        return found[0] if found else None

    def get_many(self, slot_ids: Sequence[str]) -> dict[str, SlotView]:
        """The projections of the slots the journal knows among ``slot_ids``."""
        if not slot_ids:
            return {}
        with self._read() as conn:
            found = self._select_views(conn, slots.c.slot_id.in_(sorted(set(slot_ids))))
        return {v.slot_id: v for v in found}

    def load_active(self) -> list[SlotView]:
        """Every non-terminal slot, oldest first: all that start-up needs to read."""
        with self._read() as conn:
            views = self._select_views(conn, slots.c.state.in_(_ACTIVE))
        return sorted(views, key=lambda v: v.last_seq)

    def current_for_agent(self, agent_id: str) -> SlotView | None:
        """The agent's current slot (dispatching, in progress or paused), if any."""
        with self._read() as conn:
            found = self._select_views(
                conn, slots.c.agent_id == agent_id, slots.c.state.in_(_CURRENT)
            )
        return found[0] if found else None

    def history(
        self,
        *,
        agent_id: str | None = None,
        state: SlotState | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[SlotView]:
        """Slots, newest change first, filtered by agent, state and last-change window."""
        where: list[Any] = []
        if agent_id is not None:
            where.append(slots.c.agent_id == agent_id)
        if state is not None:
            where.append(slots.c.state == state.value)
        if since is not None:
            where.append(slots.c.updated_at >= since)
        if until is not None:
            where.append(slots.c.updated_at < until)
        stmt = (
            select(slots)
            .where(slots.c.identifier == self.identifier, *where)
            .order_by(slots.c.last_seq.desc())
        )
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as conn:
            return [_view_from_row(row) for row in conn.execute(stmt).mappings()]

    def events(
        self, slot_id: str | None = None, *, after_seq: int = 0, limit: int | None = None
    ) -> list[Event]:
        """Events of this identifier (or of one slot) in ``seq`` order."""
        with self._read() as conn:
            return list(self._iter_events(conn, slot_id=slot_id, after_seq=after_seq, limit=limit))

    def _iter_events(
        self,
        conn: Connection,
        *,
        slot_id: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> Iterator[Event]:
        stmt = select(events).where(
            events.c.identifier == self.identifier, events.c.seq > after_seq
        )
        if slot_id is not None:
            stmt = stmt.where(events.c.slot_id == slot_id)
        stmt = stmt.order_by(events.c.seq)
        if limit is not None:
            stmt = stmt.limit(limit)
        for row in conn.execute(stmt.execution_options(yield_per=1000)).mappings():
            yield _event_from_row(row)

    def terminal_settled_at(self, slot_id: str) -> datetime | None:
        """When the backend learnt the slot's current terminal status, if it has.

        A reconcile came from the backend, so it is settled when recorded; otherwise the
        terminal event's outbox row must be delivered (or dead-lettered: the backend
        refused it for good, and will not hear it by retrying).
        """
        with self._read() as conn:
            found = self._select_views(conn, slots.c.slot_id == slot_id)
            if not found or not found[0].terminal:
                return None
            last = conn.execute(
                select(events.c.kind, events.c.recorded_at, outbox.c.delivered_at, outbox.c.dead_at)
                .select_from(events.outerjoin(outbox, outbox.c.event_seq == events.c.seq))
                .where(events.c.seq == found[0].last_seq)
            ).one()
        settled: datetime | None
        if last.kind == Trigger.reconcile.value:
            settled = last.recorded_at
        else:
            settled = last.delivered_at or last.dead_at
        return settled

    # -- outbox -------------------------------------------------------------------------

    def due_outbox(self, now: datetime, limit: int = 100) -> list[OutboxRow]:
        """Rows due for delivery, only the oldest undelivered row of each slot (order)."""
        earlier = outbox.alias("earlier")
        blocked = (
            select(earlier.c.id)
            .where(
                earlier.c.identifier == outbox.c.identifier,
                earlier.c.slot_id == outbox.c.slot_id,
                earlier.c.id < outbox.c.id,
                earlier.c.delivered_at.is_(None),
                earlier.c.dead_at.is_(None),
            )
            .exists()
        )
        stmt = (
            select(outbox)
            .where(
                outbox.c.identifier == self.identifier,
                outbox.c.delivered_at.is_(None),
                outbox.c.dead_at.is_(None),
                outbox.c.next_try_at <= now,
                ~blocked,
            )
            # The same order as by id alone (the other columns are fixed by the filter),
            # spelt as ix_outbox_due's columns: PostgreSQL does not count `IS NULL` as
            # fixing a column, so `ORDER BY id` alone made it walk the primary key through
            # every delivered row of the history to find the first due ones.
            .order_by(outbox.c.identifier, outbox.c.delivered_at, outbox.c.dead_at, outbox.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [_outbox_from_row(row) for row in conn.execute(stmt).mappings()]

    def next_outbox_due(self) -> datetime | None:
        """The earliest ``next_try_at`` among undelivered rows, or ``None`` if none wait."""
        with self._read() as conn:
            return conn.execute(
                select(func.min(outbox.c.next_try_at)).where(
                    outbox.c.identifier == self.identifier,
                    outbox.c.delivered_at.is_(None),
                    outbox.c.dead_at.is_(None),
                )
            ).scalar_one_or_none()

    def mark_delivered(self, row_id: int, note: str | None = None) -> None:
        """The backend acknowledged the row."""
        with self._write() as conn:
            self.mark_delivered_in(conn, row_id, note)

    def mark_delivered_in(self, conn: Connection, row_id: int, note: str | None = None) -> None:
        """:meth:`mark_delivered` inside the write transaction ``conn`` holds."""
        self._mark(conn, row_id, delivered_at=self._clock(), last_error=note)

    def mark_retry(self, row_id: int, next_try_at: datetime, error: str) -> None:
        """A passing fault (or a refused key): try again at ``next_try_at``."""
        with self._write() as conn:
            self.mark_retry_in(conn, row_id, next_try_at, error)

    def mark_retry_in(
        self, conn: Connection, row_id: int, next_try_at: datetime, error: str
    ) -> None:
        """:meth:`mark_retry` inside the write transaction ``conn`` holds."""
        self._mark(conn, row_id, next_try_at=next_try_at, last_error=error[:2000])

    def mark_dead(self, row_id: int, error: str) -> None:
        """The backend cannot take the row: keep it, visible, and stop trying."""
        with self._write() as conn:
            self.mark_dead_in(conn, row_id, error)

    def mark_dead_in(self, conn: Connection, row_id: int, error: str) -> None:
        """:meth:`mark_dead` inside the write transaction ``conn`` holds."""
        self._mark(conn, row_id, dead_at=self._clock(), last_error=error[:2000])

    def _mark(self, conn: Connection, row_id: int, **values: Any) -> None:
        ((kind, when),) = ((k, v) for k, v in values.items() if k != "last_error")
        statements.execute(
            conn,
            self._sql.mark[kind],
            {"row_id": row_id, kind: when, "last_error": values.get("last_error")},
        )

    def settle_conflict(
        self, row: OutboxRow, backend_status: SlotState, reason: str | None
    ) -> Event | None:
        """409: the backend holds ``backend_status``. Reconcile to it and stop retrying.

        One transaction: the reconcile event (unless the slot is already in that state, or
        has moved to another attempt) and the row marked delivered with a note.
        """
        with self._write() as conn:
            applied = self.settle_conflict_in(conn, row, backend_status, reason)
        return applied.events[0] if applied.events else None

    def settle_conflict_in(
        self, conn: Connection, row: OutboxRow, backend_status: SlotState, reason: str | None
    ) -> Applied:
        """:meth:`settle_conflict` inside the write transaction ``conn`` holds."""
        found = self._load_head(conn, row.slot_id)
        applied = Applied([], {})
        if found and found.attempt == row.attempt and found.state is not backend_status:
            applied = self.apply_in(
                conn,
                [
                    TransitionRequest(
                        slot_id=row.slot_id,
                        trigger=Trigger.reconcile,
                        actor=Actor.backend,
                        target=backend_status,
                        reason=reason,
                        attempt=row.attempt,
                    )
                ],
            )
        note = f"409: backend holds {backend_status.value}"
        self._mark(conn, row.id, delivered_at=self._clock(), last_error=note)
        return applied

    def outbox_counts(self) -> OutboxCounts:
        """Rows waiting (pending) and dead-lettered (given up on, never delivered)."""
        # One range of ix_outbox_due: the undelivered rows. Delivered rows (nearly the
        # whole outbox, growing with history) are never read; a dead row is undelivered.
        stmt = select(func.count(), func.count(outbox.c.dead_at)).where(
            outbox.c.identifier == self.identifier, outbox.c.delivered_at.is_(None)
        )
        with self._read() as conn:
            undelivered, dead = conn.execute(stmt).one()
        return OutboxCounts(pending=int(undelivered) - int(dead), dead=int(dead))

    def outbox_rows(self, *, slot_id: str | None = None) -> list[OutboxRow]:
        """Every outbox row (of one slot, if given) in order."""
        stmt = select(outbox).where(outbox.c.identifier == self.identifier)
        if slot_id is not None:
            stmt = stmt.where(outbox.c.slot_id == slot_id)
        with self._read() as conn:
            return [
                _outbox_from_row(r) for r in conn.execute(stmt.order_by(outbox.c.id)).mappings()
            ]

    # -- replay -------------------------------------------------------------------------

    def verify(self) -> list[Mismatch]:
        """Every slot whose stored projection differs from the fold of its events.

        Streams plain rows (driver values, nothing parsed but each ``receive``'s slot) and
        compares plain values; only slots that differ are read again as typed views, so
        the report names typed values while a clean journal costs about one raw read.
        """
        mine = events.c.identifier == self.identifier
        event_rows = select(*PLAIN_EVENT_COLUMNS).where(mine).order_by(events.c.seq)
        slot_rows = select(*PLAIN_SLOT_COLUMNS).where(slots.c.identifier == self.identifier)
        with self._read() as conn:
            folded = fold_rows(conn.execute(event_rows.execution_options(yield_per=2000)))
            stale = drifted(conn.execute(slot_rows.execution_options(yield_per=2000)), folded)
            del folded  # the typed re-read below needs only the few stale slots
            return self._mismatches(conn, sorted(stale))

    def _mismatches(self, conn: Connection, slot_ids: Sequence[str]) -> list[Mismatch]:
        stored: dict[tuple[str, str], SlotView] = {}
        folded: dict[tuple[str, str], SlotView] = {}
        for start in range(0, len(slot_ids), 500):  # bounded IN lists
            chunk = slot_ids[start : start + 500]
            for view in self._select_views(conn, slots.c.slot_id.in_(chunk)):
                stored[view.identifier, view.slot_id] = view
            stmt = (
                select(events)
                .where(events.c.identifier == self.identifier, events.c.slot_id.in_(chunk))
                .order_by(events.c.seq)
            )
            folded.update(fold(_event_from_row(row) for row in conn.execute(stmt).mappings()))
        return diff(stored, folded)

    def rebuild(self) -> int:
        """Recompute the projection from the events; return the number of slots."""
        with self._write() as conn:
            folded = fold(self._iter_events(conn))
            conn.execute(delete(slots).where(slots.c.identifier == self.identifier))
            rows = [
                {"identifier": v.identifier, "slot_id": v.slot_id, **_view_values(v)}
                for v in folded.values()
            ]
            for start in range(0, len(rows), 1000):  # one executemany per thousand rows
                conn.execute(insert(slots), rows[start : start + 1000])
        return len(folded)


class _Head(NamedTuple):
    """What a transition needs of a slot: its state, attempt and agent to decide, and
    the columns its :class:`~calsched.journal.replay.Change` carries forward."""

    state: SlotState
    attempt: int
    agent_id: str
    started_at: datetime | None = None
    summary: str | None = None
    reason: str | None = None


def _event_values(event: Event) -> dict[str, Any]:
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


def _outbox_values(event: Event, seq: int) -> dict[str, Any]:
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


def _change_values(step: Change) -> dict[str, Any]:
    return {
        "state": step.state.value,
        "started_at": step.started_at,
        "updated_at": step.updated_at,
        "resolved_at": step.resolved_at,
        "summary": step.summary,
        "reason": step.reason,
        "last_seq": step.last_seq,
    }


def _keyed(view: SlotView, values: dict[str, Any]) -> dict[str, Any]:
    return {**values, "k_identifier": view.identifier, "k_slot_id": view.slot_id}


def _label(state: SlotState | None) -> str:
    return "new" if state is None else state.value


def _with_seq(event: Event, seq: int) -> Event:
    return replace(event, seq=int(seq))


def _view_values(view: SlotView) -> dict[str, Any]:
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
_TRIGGER = {t.value: t for t in Trigger}
_ACTOR = {a.value: a for a in Actor}


def _view_from_row(row: Mapping[Any, Any]) -> SlotView:
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


def _event_from_row(row: RowMapping) -> Event:
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


def _outbox_from_row(row: RowMapping) -> OutboxRow:
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
