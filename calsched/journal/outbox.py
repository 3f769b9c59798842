"""The outbox: the state changes the backend must hear, until it has heard them.

Each row is written beside its event (:mod:`calsched.journal.transitions`); this module
reads the rows due, marks each try's outcome, and settles a conflict (409) by reconciling
the slot to the backend's status. :class:`OutboxLog` is the part of
:class:`~calsched.journal.store.Journal` that does it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from calsched.journal import statements
from calsched.journal.rows import OutboxCounts, OutboxRow, outbox_from_row
from calsched.journal.schema import outbox
from calsched.journal.statements import Statements
from calsched.journal.transitions import Applied, TransitionRequest, Transitions
from calsched.model import Actor, Event, SlotState, Trigger

__all__ = ["DEAD_SLOTS_SHOWN", "OutboxLog"]

#: How many dead-lettered slots the counts name (status, metrics); the rest are counted.
DEAD_SLOTS_SHOWN = 20


class OutboxLog:
    """Outbox reads and writes of one identifier (a base of the journal)."""

    identifier: str
    _clock: Callable[[], datetime]
    _transitions: Transitions

    @property
    def _sql(self) -> Statements:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

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
            return [outbox_from_row(row) for row in conn.execute(stmt).mappings()]

    def mark_delivered(self, row_id: int, note: str | None = None) -> None:
        """The backend acknowledged the row."""
        with self._write() as conn:
            self.mark_delivered_in(conn, row_id, note)

    def mark_delivered_in(self, conn: Connection, row_id: int, note: str | None = None) -> None:
        """:meth:`mark_delivered` inside the write transaction ``conn`` holds."""
        self._mark(conn, row_id, delivered_at=self._clock(), last_error=note)

    def mark_delivered_many_in(self, conn: Connection, row_ids: Sequence[int]) -> None:
        """:meth:`mark_delivered_in` of many rows, in one statement execution."""
        when = self._clock()
        statements.execute_many(
            conn,
            self._sql.mark["delivered_at"],
            [{"row_id": row_id, "delivered_at": when, "last_error": None} for row_id in row_ids],
        )

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
        found = self._transitions.load_head(conn, row.slot_id)
        applied = Applied([], {})
        if found and found.attempt == row.attempt and found.state is not backend_status:
            applied = self._transitions.apply_in(
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
            # Status names the dead-lettered slots; there are few, and usually none.
            dead_slots = self._dead_slots(conn) if dead else ()
        return OutboxCounts(
            pending=int(undelivered) - int(dead), dead=int(dead), dead_slots=dead_slots
        )

    def _dead_slots(self, conn: Connection) -> tuple[str, ...]:
        """The slots of the oldest dead rows, by id: one range of ix_outbox_due, in its
        order (a DISTINCT or ORDER BY slot_id would walk the whole outbox instead)."""
        stmt = (
            select(outbox.c.slot_id)
            .where(
                outbox.c.identifier == self.identifier,
                outbox.c.delivered_at.is_(None),
                outbox.c.dead_at.is_not(None),
            )
            .order_by(outbox.c.identifier, outbox.c.delivered_at, outbox.c.dead_at, outbox.c.id)
            .limit(DEAD_SLOTS_SHOWN * 5)
        )
        found = dict.fromkeys(conn.execute(stmt).scalars())
        return tuple(sorted(found)[:DEAD_SLOTS_SHOWN])

    def outbox_rows(self, *, slot_id: str | None = None) -> list[OutboxRow]:
        """Every outbox row (of one slot, if given) in order."""
        stmt = select(outbox).where(outbox.c.identifier == self.identifier)
        if slot_id is not None:
            stmt = stmt.where(outbox.c.slot_id == slot_id)
        with self._read() as conn:
            return [outbox_from_row(r) for r in conn.execute(stmt.order_by(outbox.c.id)).mappings()]
