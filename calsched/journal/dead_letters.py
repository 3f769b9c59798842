"""Dead letters: the outbox rows the backend would not take, and what an operator does
with them (``calsched outbox``).

A row is dead-lettered when the backend refused it for good (``dead_at`` set); it stays,
visible, and is never tried again by itself. An operator may

- **retry** it: ``dead_at`` cleared and the row due now, so the outbox worker sends it
  again (a pending row retried is simply due now: its backoff is cut short); or
- **discard** it: the row is settled without being delivered: ``delivered_at`` set beside
  its ``dead_at`` (a pending row discarded gets both), ``last_error`` saying
  ``discarded by the operator: <reason>``; it no longer counts as dead.

A dead row does not hold its slot's later rows back, so a later status may have reached
the backend meanwhile: such a row is not retried (the backend would hear an older status
after a newer one); it can only be discarded. A revived row that is older than its slot's
pending rows goes first again, in order.

Each action is recorded in ``operator_actions`` (actor ``operator``, the row, its slot,
the reason, when) in the transaction that makes it, so the journal says who did what.
The writes take a connection inside a write transaction: the daemon's group writer (its
one write gateway), or an offline command's own under the identifier's lease.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update

from calsched.errors import InvalidInputError, OutboxRowNotFoundError
from calsched.journal.engine import reading
from calsched.journal.rows import OutboxRow, outbox_from_row
from calsched.journal.schema import operator_actions, outbox
from calsched.model import Actor, format_time, utcnow

__all__ = ["DISCARD", "RETRY", "DeadLetters", "OperatorAction", "row_wire"]

#: The ``action`` of an ``operator_actions`` row.
RETRY = "outbox_retry"
DISCARD = "outbox_discard"


@dataclass(frozen=True, slots=True)
class OperatorAction:
    """One recorded operator action."""

    id: int
    identifier: str
    action: str
    actor: Actor
    outbox_id: int | None
    slot_id: str | None
    reason: str | None
    recorded_at: datetime


def row_wire(row: OutboxRow) -> dict[str, Any]:
    """An outbox row as JSON (``outbox list --json``, the control API's answers)."""

    def when(value: datetime | None) -> str | None:
        return format_time(value) if value is not None else None

    return {
        "id": row.id,
        "slot_id": row.slot_id,
        "attempt": row.attempt,
        "status": row.status.value,
        "state": "dead" if row.dead_at is not None else "pending",
        "tries": row.tries,
        "occurred_at": when(row.occurred_at),
        "next_try_at": when(row.next_try_at),
        "dead_at": when(row.dead_at),
        "last_error": row.last_error,
    }


class DeadLetters:
    """The undelivered outbox rows of one identifier, and the operator's actions on them."""

    def __init__(
        self, engine: Engine, identifier: str, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.engine = engine
        self.identifier = identifier
        self._clock = clock

    # -- reads ----------------------------------------------------------------------------

    def undelivered(
        self, *, dead_only: bool = False, limit: int | None = None
    ) -> tuple[list[OutboxRow], int]:
        """Rows not yet delivered (or only the dead ones), oldest first, at most
        ``limit``; and how many there are in all."""
        where = [outbox.c.identifier == self.identifier, outbox.c.delivered_at.is_(None)]
        if dead_only:
            where.append(outbox.c.dead_at.is_not(None))
        rows = select(outbox).where(*where).order_by(outbox.c.id)
        if limit is not None:
            rows = rows.limit(limit)
        with reading(self.engine, "journal") as conn:
            found = [outbox_from_row(r) for r in conn.execute(rows).mappings()]
            total = conn.execute(select(func.count()).select_from(outbox).where(*where))
            return found, int(total.scalar_one())

    def actions(self) -> list[OperatorAction]:
        """Every recorded operator action of this identifier, oldest first."""
        stmt = (
            select(operator_actions)
            .where(operator_actions.c.identifier == self.identifier)
            .order_by(operator_actions.c.id)
        )
        with reading(self.engine, "journal") as conn:
            return [
                OperatorAction(**{**row, "actor": Actor(row["actor"])})
                for row in conn.execute(stmt).mappings()
            ]

    # -- writes (inside the caller's write transaction) -----------------------------------

    def retry_in(self, conn: Connection, row_id: int | None, actor: Actor) -> list[int]:
        """Make a row (``None``: every dead row not overtaken) due now, dead or not; the
        rows retried.

        Raises :class:`OutboxRowNotFoundError` for a row that does not wait, and
        :class:`InvalidInputError` for one a later delivered row of its slot overtook.
        """
        now = self._clock()
        if row_id is None:
            ids = list(
                conn.execute(
                    select(outbox.c.id)
                    .where(
                        outbox.c.identifier == self.identifier,
                        outbox.c.delivered_at.is_(None),
                        outbox.c.dead_at.is_not(None),
                    )
                    .order_by(outbox.c.id)
                ).scalars()
            )
            rows = [
                r for r in (self._waiting(conn, i) for i in ids) if not self._overtaken(conn, r)
            ]
        else:
            rows = [self._waiting(conn, row_id)]
            if self._overtaken(conn, rows[0]):
                raise InvalidInputError(
                    "id",
                    f"a later status of slot {rows[0].slot_id} reached the backend since; "
                    "retrying would send an older one after it (discard the row instead)",
                )
        for row in rows:
            conn.execute(
                update(outbox).where(outbox.c.id == row.id).values(dead_at=None, next_try_at=now)
            )
            self._record(conn, RETRY, actor, row, None, now)
        return [row.id for row in rows]

    def discard_in(self, conn: Connection, row_id: int, reason: str, actor: Actor) -> OutboxRow:
        """Settle a row without delivering it; the row as it was.

        Raises :class:`InvalidInputError` without a reason, :class:`OutboxRowNotFoundError`
        for a row that does not wait.
        """
        if not reason.strip():
            raise InvalidInputError("reason", "say why the row is discarded")
        row = self._waiting(conn, row_id)
        now = self._clock()
        conn.execute(
            update(outbox)
            .where(outbox.c.id == row.id)
            .values(
                dead_at=row.dead_at or now,
                delivered_at=now,
                last_error=f"discarded by the operator: {reason}"[:2000],
            )
        )
        self._record(conn, DISCARD, actor, row, reason, now)
        return row

    def _waiting(self, conn: Connection, row_id: int) -> OutboxRow:
        found = (
            conn.execute(
                select(outbox).where(outbox.c.identifier == self.identifier, outbox.c.id == row_id)
            )
            .mappings()
            .first()
        )
        if found is None:
            raise OutboxRowNotFoundError(row_id)
        row = outbox_from_row(found)
        if row.delivered_at is not None:
            raise OutboxRowNotFoundError(row_id, settled=True)
        return row

    def _overtaken(self, conn: Connection, row: OutboxRow) -> bool:
        """Whether a later row of the same slot was delivered (not discarded)."""
        later = select(outbox.c.id).where(
            outbox.c.identifier == self.identifier,
            outbox.c.slot_id == row.slot_id,
            outbox.c.id > row.id,
            outbox.c.delivered_at.is_not(None),
            outbox.c.dead_at.is_(None),
        )
        return conn.execute(later.limit(1)).first() is not None

    def _record(
        self,
        conn: Connection,
        action: str,
        actor: Actor,
        row: OutboxRow,
        reason: str | None,
        when: datetime,
    ) -> None:
        conn.execute(
            insert(operator_actions).values(
                identifier=self.identifier,
                action=action,
                actor=actor.value,
                outbox_id=row.id,
                slot_id=row.slot_id,
                reason=reason,
                recorded_at=when,
            )
        )
