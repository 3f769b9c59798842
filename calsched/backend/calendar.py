"""The embedded local calendar: slots to fire and status receipts, in the journal's database.

:class:`LocalCalendar` keeps the tables ``calendar_slots`` and ``calendar_receipts``
(created by the migrations, beside the journal, so a quickstart needs one file). The
reference backend (:mod:`calsched.backend.server`) serves it over HTTP; the daemon's
embedded calendar is that same app, reached in-process (:func:`calsched.daemon.embedded_backend`).

How a slot moves through the calendar (its own statuses, not the scheduler's)::

    scheduled --(heartbeat, fire_at <= now)--> fired --(status update)--> in_progress,
    paused, completed or aborted

- A ``scheduled`` slot whose ``fire_at`` has passed is returned by the next heartbeat
  and becomes ``fired``, held by that heartbeat's identifier.
- A ``fired`` slot is returned again on every beat of its holder until a status update
  arrives for it, so a host that crashed before journaling it gets it again.
- ``in_progress``/``paused`` slots are not listed; a terminal status stops the slot.
- Status updates are idempotent by key: a replayed key gets the same answer and records
  no second receipt (:mod:`calsched.backend.receipts`). A key reused for a *different*
  update is refused.
- If the calendar holds a terminal status, an update to another status is a conflict
  (:class:`~calsched.errors.BackendConflictError` carrying the held status), unless its
  attempt is higher than the one held: that is a re-attempt and is accepted. An update
  repeating the held terminal status is acknowledged.
- An update for an attempt older than the one held, on a live slot, is acknowledged
  (and receipted) but not applied: it lost a race with a newer attempt.

Not done, on purpose: a slot a host stops mentioning in ``active_slots`` is not aborted
by the calendar (the heartbeat stores nothing but the fired marks). Operators see it as
``in_progress`` with its holder and may :meth:`LocalCalendar.reschedule` it.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, insert, or_, select
from sqlalchemy import update as update_rows

from calsched.backend.receipts import (
    KEY_MAX,
    Receipt,
    StatusOutcome,
    find_receipt_in,
    insert_receipt_in,
    receipts_in,
)
from calsched.errors import BackendConflictError, InvalidInputError, SlotNotFoundError
from calsched.journal.engine import reading, writing
from calsched.journal.schema import calendar_slots
from calsched.model import (
    Slot,
    SlotUpdate,
    WakeOptions,
    format_time,
    parse,
    utcnow,
)

__all__ = [
    "DEFAULT_BEAT_LIMIT",
    "CalendarSlot",
    "CalendarStatus",
    "LocalCalendar",
]

Clock = Callable[[], datetime]

#: At most this many slots go into one heartbeat answer, so that the answer stays far
#: below the client's size cap however many slots fall due at once; the rest follow on
#: the next beats.
DEFAULT_BEAT_LIMIT = 256


class CalendarStatus(enum.StrEnum):
    """Where a slot is in the local calendar."""

    scheduled = "scheduled"
    fired = "fired"
    in_progress = "in_progress"
    paused = "paused"
    completed = "completed"
    aborted = "aborted"

    @property
    def terminal(self) -> bool:
        """True for ``completed`` and ``aborted``."""
        return self in (CalendarStatus.completed, CalendarStatus.aborted)


@dataclass(frozen=True, slots=True)
class CalendarSlot:
    """One row of ``calendar_slots``."""

    id: str
    agent_id: str
    title: str | None
    prompt_text: str | None
    fire_at: datetime
    wake_options: Mapping[str, Any]
    status: CalendarStatus
    attempt: int
    holder: str | None
    summary: str | None
    reason: str | None
    created_at: datetime
    updated_at: datetime

    def to_slot(self) -> Slot:
        """The slot as a heartbeat lists it (``scheduled_at`` is ``fire_at``)."""
        return Slot(
            id=self.id,
            agent_id=self.agent_id,
            title=self.title,
            prompt_text=self.prompt_text,
            scheduled_at=self.fire_at,
            wake_options=WakeOptions.from_stored(self.wake_options),
        )

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready dict of every column, times in RFC 3339 UTC."""
        return {
            "id": self.id,
            "agent_id": self.agent_id,
            "title": self.title,
            "prompt_text": self.prompt_text,
            "fire_at": format_time(self.fire_at),
            "wake_options": dict(self.wake_options),
            "status": self.status.value,
            "attempt": self.attempt,
            "holder": self.holder,
            "summary": self.summary,
            "reason": self.reason,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
        }


def _slot_from(row: RowMapping) -> CalendarSlot:
    return CalendarSlot(
        id=row["id"],
        agent_id=row["agent_id"],
        title=row["title"],
        prompt_text=row["prompt_text"],
        fire_at=row["fire_at"],
        wake_options=dict(row["wake_options"] or {}),
        status=CalendarStatus(row["status"]),
        attempt=row["attempt"],
        holder=row["holder"],
        summary=row["summary"],
        reason=row["reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class LocalCalendar:
    """The embedded calendar, in the database behind ``engine`` (schema from migrations).

    Synchronous (SQLAlchemy Core); call it from a thread when on an event loop. Every
    method that takes ``now`` uses the calendar's clock when it is omitted. Database
    failures raise :class:`~calsched.errors.JournalError`.

    Example: ``LocalCalendar(journal.engine).add("s-1", "bob", title="Weekly report")``
    """

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self.engine = engine
        self._clock = clock

    # -- transactions -------------------------------------------------------------------

    def _write(self) -> AbstractContextManager[Connection]:
        return writing(self.engine, "calendar")

    def _read(self) -> AbstractContextManager[Connection]:
        return reading(self.engine, "calendar")

    # -- slots --------------------------------------------------------------------------

    def add(
        self,
        slot_id: str,
        agent_id: str,
        *,
        fire_at: datetime | None = None,
        title: str | None = None,
        prompt_text: str | None = None,
        override_message: str | None = None,
    ) -> CalendarSlot:
        """Schedule a new slot to fire at ``fire_at`` (default: now).

        Raises :class:`~calsched.errors.InvalidInputError` for a bad id or an id that is
        already in the calendar.
        """
        now = self._clock()
        # The wire model's rules (non-empty ids, at most MAX_ID_CHARS) apply here too.
        slot = parse(
            Slot,
            {
                "id": slot_id,
                "agent_id": agent_id,
                "title": title,
                "prompt_text": prompt_text,
                "scheduled_at": fire_at or now,
                "wake_options": {"override_message": override_message},
            },
        )
        assert slot.scheduled_at is not None
        with self._write() as conn:
            exists = conn.execute(
                select(calendar_slots.c.id).where(calendar_slots.c.id == slot.id)
            ).first()
            if exists is not None:
                raise InvalidInputError("id", f"a slot with the id {slot.id!r} already exists")
            conn.execute(
                insert(calendar_slots).values(
                    id=slot.id,
                    agent_id=slot.agent_id,
                    title=slot.title,
                    prompt_text=slot.prompt_text,
                    fire_at=slot.scheduled_at,
                    wake_options=slot.wake_options.to_wire(),
                    status=CalendarStatus.scheduled.value,
                    attempt=1,
                    holder=None,
                    summary=None,
                    reason=None,
                    created_at=now,
                    updated_at=now,
                )
            )
            return self._get_in(conn, slot.id)

    def get(self, slot_id: str) -> CalendarSlot:
        """The slot; :class:`~calsched.errors.SlotNotFoundError` if there is none."""
        with self._read() as conn:
            return self._get_in(conn, slot_id)

    def reschedule(self, slot_id: str, *, fire_at: datetime | None = None) -> CalendarSlot:
        """Make a slot ``scheduled`` again at ``fire_at`` (default: now), whatever its status.

        The held attempt is kept: the host that fires it again reports a higher attempt,
        which the calendar accepts even after a terminal status.
        """
        now = self._clock()
        with self._write() as conn:
            self._get_in(conn, slot_id, lock=True)
            conn.execute(
                update_rows(calendar_slots)
                .where(calendar_slots.c.id == slot_id)
                .values(
                    status=CalendarStatus.scheduled.value,
                    fire_at=fire_at or now,
                    holder=None,
                    updated_at=now,
                )
            )
            return self._get_in(conn, slot_id)

    def list(
        self, status: CalendarStatus | str | Iterable[CalendarStatus | str] | None = None
    ) -> builtins.list[CalendarSlot]:
        """Every slot, or those with ``status`` (one or several), by ``fire_at`` then id."""
        query = select(calendar_slots).order_by(calendar_slots.c.fire_at, calendar_slots.c.id)
        if status is not None:
            wanted = [status] if isinstance(status, str) else builtins.list(status)
            try:
                values = [CalendarStatus(s).value for s in wanted]
            except ValueError:
                raise InvalidInputError(
                    "status", f"must be among {[s.value for s in CalendarStatus]}"
                ) from None
            query = query.where(calendar_slots.c.status.in_(values))
        with self._read() as conn:
            return [_slot_from(row) for row in conn.execute(query).mappings()]

    def fire_due(
        self, identifier: str, *, now: datetime | None = None, limit: int = DEFAULT_BEAT_LIMIT
    ) -> builtins.list[CalendarSlot]:
        """Answer a heartbeat from ``identifier`` in one transaction.

        Returns the slots already fired to it and not yet reported on, plus the
        ``scheduled`` slots now due, which become ``fired`` held by ``identifier``.
        """
        at = now or self._clock()
        with self._write() as conn:
            listed = self._due_in(conn, at, holder=identifier, limit=limit)
            fresh = [s.id for s in listed if s.status is CalendarStatus.scheduled]
            if fresh:
                self._mark_fired_in(conn, fresh, identifier, at)
            fired = CalendarStatus.fired
            return [
                replace(s, status=fired, holder=identifier, updated_at=at)
                if s.status is CalendarStatus.scheduled
                else s
                for s in listed
            ]

    def has_due(self, *, now: datetime | None = None) -> bool:
        """Whether a ``scheduled`` slot is due (``fire_at <= now``): what a heartbeat
        would fire. One read on the ``(status, fire_at)`` index, ``LIMIT 1``: its cost does
        not grow with the number of slots."""
        at = now or self._clock()
        query = (
            select(calendar_slots.c.id)
            .where(calendar_slots.c.status == CalendarStatus.scheduled.value)
            .where(calendar_slots.c.fire_at <= at)
            .limit(1)
        )
        with self._read() as conn:
            return conn.execute(query).first() is not None

    # -- status updates -----------------------------------------------------------------

    def record_status(
        self,
        slot_id: str,
        update: SlotUpdate,
        idempotency_key: str,
        *,
        now: datetime | None = None,
    ) -> StatusOutcome:
        """Take a status update for ``slot_id``, at most once per ``idempotency_key``.

        Raises :class:`~calsched.errors.SlotNotFoundError` for an unknown slot,
        :class:`~calsched.errors.BackendConflictError` when the calendar holds another
        terminal status, and :class:`~calsched.errors.InvalidInputError` for a bad key or a
        key already used for a different update.
        """
        if not idempotency_key or len(idempotency_key) > KEY_MAX:
            raise InvalidInputError("Idempotency-Key", f"must be 1 to {KEY_MAX} characters")
        at = now or self._clock()
        with self._write() as conn:
            # Lock the slot first: concurrent posts for one slot (and replays of one key)
            # then run one after the other, and the receipt check below sees the winner.
            held = self._get_in(conn, slot_id, lock=True)
            previous = find_receipt_in(conn, idempotency_key)
            if previous is not None:
                if (previous.slot_id, previous.status, previous.attempt) != (
                    slot_id,
                    update.status,
                    update.attempt,
                ):
                    raise InvalidInputError(
                        "Idempotency-Key", "was already used for a different status update"
                    )
                return StatusOutcome(receipt=previous, replayed=True, applied=True)
            applied = self._decide(held, update)
            if applied:
                conn.execute(
                    update_rows(calendar_slots)
                    .where(calendar_slots.c.id == slot_id)
                    .values(
                        status=update.status.value,
                        attempt=max(held.attempt, update.attempt),
                        holder=update.identifier,
                        summary=update.summary,
                        reason=update.reason,
                        updated_at=at,
                    )
                )
            receipt = insert_receipt_in(conn, idempotency_key, slot_id, update, at)
            return StatusOutcome(receipt=receipt, replayed=False, applied=applied)

    @staticmethod
    def _decide(held: CalendarSlot, update: SlotUpdate) -> bool:
        """True to apply, False to acknowledge without applying; raise on a conflict."""
        if update.attempt > held.attempt:
            return True  # a re-attempt supersedes whatever the older attempt reached
        if held.status.terminal:
            if update.status.value == held.status.value and update.attempt == held.attempt:
                return False  # the same news again under another key: nothing changes
            raise BackendConflictError(
                f"slot {held.id!r} is already {held.status.value}",
                status=held.status.value,
                reason=held.reason,
            )
        return update.attempt == held.attempt

    def receipts(self, slot_id: str | None = None) -> builtins.list[Receipt]:
        """Accepted status updates, oldest first; only ``slot_id``'s when given."""
        with self._read() as conn:
            return receipts_in(conn, slot_id)

    # -- helpers inside one transaction -------------------------------------------------

    def _get_in(self, conn: Connection, slot_id: str, *, lock: bool = False) -> CalendarSlot:
        query = select(calendar_slots).where(calendar_slots.c.id == slot_id)
        if lock:
            query = query.with_for_update()  # row lock on PostgreSQL; SQLite locked the file
        row = conn.execute(query).mappings().first()
        if row is None:
            raise SlotNotFoundError(slot_id)
        return _slot_from(row)

    def _due_in(
        self, conn: Connection, now: datetime, *, holder: str, limit: int
    ) -> builtins.list[CalendarSlot]:
        """``scheduled`` slots now due, and those already fired to ``holder``."""
        due = (calendar_slots.c.status == CalendarStatus.scheduled.value) & (
            calendar_slots.c.fire_at <= now
        )
        held = (calendar_slots.c.status == CalendarStatus.fired.value) & (
            calendar_slots.c.holder == holder
        )
        query = (
            select(calendar_slots)
            .where(or_(due, held))
            .order_by(calendar_slots.c.fire_at, calendar_slots.c.id)
            .limit(limit)
        )
        return [_slot_from(row) for row in conn.execute(query).mappings()]

    def _mark_fired_in(
        self, conn: Connection, ids: builtins.list[str], holder: str, now: datetime
    ) -> None:
        conn.execute(
            update_rows(calendar_slots)
            .where(calendar_slots.c.id.in_(ids))
            .where(calendar_slots.c.status == CalendarStatus.scheduled.value)
            .values(status=CalendarStatus.fired.value, holder=holder, updated_at=now)
        )
