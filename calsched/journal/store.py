"""The journal: the event log of one identifier, its ``slots`` projection and its outbox.

Every transition goes through :meth:`Journal.apply_in` (:mod:`calsched.journal.transitions`):
inside one ``BEGIN IMMEDIATE`` transaction it decides each request with the shared state
machine before it writes, appends the events, the outbox rows and the projection's change,
and commits once; :meth:`Journal.apply_many` runs it in a transaction of its own, the
scheduler's group writer (:mod:`calsched.journal.writer`) in a transaction it shares with
every write waiting beside it. An invalid transition raises before anything is written.

Keeping the write path in this one place is deliberate: group commit, failpoints for the
crash harness, and a lease per identifier are changes there, not everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    delete,
    insert,
    select,
)

from calsched.journal import migrate
from calsched.journal.chain import ChainHead, ChainReport, verify_chain
from calsched.journal.engine import Synchronous, make_engine, reading, writing
from calsched.journal.lease import Fence
from calsched.journal.outbox import OutboxLog
from calsched.journal.preflight import check_sqlite_file
from calsched.journal.queries import Progress, Queries, reported
from calsched.journal.replay import (
    PLAIN_EVENT_COLUMNS,
    PLAIN_SLOT_COLUMNS,
    Mismatch,
    diff,
    drifted,
    fold,
    fold_rows,
)
from calsched.journal.rows import (
    OutboxCounts,
    OutboxRow,
    event_from_row,
    view_from_row,
    view_values,
)
from calsched.journal.schema import events, outbox, slots
from calsched.journal.statements import Statements
from calsched.journal.transitions import (
    REFUSALS,
    Applied,
    TransitionRequest,
    Transitions,
    notifies_backend,
)
from calsched.model import (
    ACTIVE_STATES,
    Event,
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


class Journal(OutboxLog, Queries):
    """The event log of one identifier (one host) in a SQL database.

    Synchronous and thread-safe per call; the scheduler calls it from one thread.

    Example: ``journal = Journal.open("sqlite:///calsched.db", "my-host", upgrade=True)``
    """

    def __init__(self, engine: Engine, identifier: str, *, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.identifier = identifier
        self._clock = clock
        #: The chain's newest hash, kept for the write path (:mod:`calsched.journal.chain`).
        self.chain_head = ChainHead(identifier)
        self._transitions = Transitions(identifier, clock, lambda: self._sql, self.chain_head)
        self._fence: Fence | None = None

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
        be reached or a SQLite file is damaged (:mod:`calsched.journal.preflight`).
        """
        engine = make_engine(url, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
        try:
            database = engine.url.database
            if engine.dialect.name == "sqlite" and database and database != ":memory:":
                # Before the first connection: SQLite would take an empty file for a new
                # journal and checkpoint a foreign -wal into it on close.
                check_sqlite_file(Path(database))
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

    def fence(self, fence: Fence | None) -> None:
        """Fence every later write with ``fence`` (a held lease's epoch check); ``None``
        turns fencing off. A journal opened without a lease is not fenced."""
        self._fence = fence
        # Whoever held the identifier meanwhile may have appended: read the head again.
        self.chain_head.forget()

    @property
    def fenced(self) -> Fence | None:
        """The fence of the lease this journal writes under, if any."""
        return self._fence

    def check_fence(self, conn: Connection) -> None:
        """Run first in every journal write transaction (here and in the group writer):
        raise :class:`~calsched.errors.LeaseLostError` if this process's lease epoch is
        no longer current. Nothing without a fence."""
        fence = self._fence
        if fence is not None:
            fence.check(conn)

    def _write(self) -> AbstractContextManager[Connection]:
        return writing(self.engine, "journal", check=self.check_fence)

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
        """Fire ``requests``, all or none, inside the write transaction ``conn`` holds
        (the group writer's): see :meth:`Transitions.apply_in`."""
        return self._transitions.apply_in(conn, requests)

    def apply_each_in(
        self, conn: Connection, requests: Sequence[TransitionRequest]
    ) -> tuple[Applied, list[Exception | None]]:
        """Fire each request on its own terms inside ``conn``'s write transaction: a
        refused one is skipped, its refusal in its place in the list; see
        :meth:`Transitions.apply_each_in`."""
        return self._transitions.apply_each_in(conn, requests)

    # -- reads --------------------------------------------------------------------------

    def _select_views(self, conn: Connection, *where: Any) -> list[SlotView]:
        stmt = select(slots).where(slots.c.identifier == self.identifier, *where)
        return [view_from_row(row) for row in conn.execute(stmt).mappings()]

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

    def ping(self) -> None:
        """The cheapest read of the journal itself (one index probe of ``slots``), for
        readiness; raises :class:`~calsched.errors.JournalError` when it cannot be read."""
        with self._read() as conn:
            stmt = select(slots.c.slot_id).where(slots.c.identifier == self.identifier)
            conn.execute(stmt.limit(1)).first()

    def load_active(self) -> list[SlotView]:
        """Every non-terminal slot, oldest first: all that start-up needs to read."""
        with self._read() as conn:
            views = self._select_views(conn, slots.c.state.in_(_ACTIVE))
        return sorted(views, key=lambda v: v.last_seq)

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
        return list(
            self.stream_history(
                agent_id=agent_id, state=state, since=since, until=until, limit=limit
            )
        )

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
        progress: Progress | None = None,
    ) -> Iterator[Event]:
        stmt = select(events).where(
            events.c.identifier == self.identifier, events.c.seq > after_seq
        )
        if slot_id is not None:
            stmt = stmt.where(events.c.slot_id == slot_id)
        stmt = stmt.order_by(events.c.seq)
        if limit is not None:
            stmt = stmt.limit(limit)
        rows = reported(conn.execute(stmt.execution_options(yield_per=1000)).mappings(), progress)
        for row in rows:
            yield event_from_row(row)

    def settled_at(self, views: Iterable[SlotView]) -> dict[str, datetime | None]:
        """For each ended slot of ``views``: when the backend learnt its terminal status.

        A reconcile came from the backend, so it is settled when recorded; otherwise the
        terminal event's outbox row must be delivered (or dead-lettered: the backend
        refused it for good, and will not hear it by retrying). ``None`` while it has
        not; live slots are left out. One read for the lot, by each view's last event.
        """
        ended = {v.last_seq: v.slot_id for v in views if v.terminal}
        settled: dict[str, datetime | None] = dict.fromkeys(ended.values())
        seqs = list(ended)
        with self._read() as conn:
            # Chunks keep the IN list within every driver's parameter limit.
            for start in range(0, len(seqs), 500):
                rows = conn.execute(
                    select(
                        events.c.seq,
                        events.c.kind,
                        events.c.recorded_at,
                        outbox.c.delivered_at,
                        outbox.c.dead_at,
                    )
                    .select_from(events.outerjoin(outbox, outbox.c.event_seq == events.c.seq))
                    .where(events.c.seq.in_(seqs[start : start + 500]))
                )
                for row in rows:
                    reconciled = row.kind == Trigger.reconcile.value
                    settled[ended[row.seq]] = (
                        row.recorded_at if reconciled else row.delivered_at or row.dead_at
                    )
        return settled

    # -- replay -------------------------------------------------------------------------

    def verify(self, progress: Progress | None = None) -> list[Mismatch]:
        """Every slot whose stored projection differs from the fold of its events.

        Streams plain rows (driver values, nothing parsed but each ``receive``'s slot) and
        compares plain values; only slots that differ are read again as typed views, so
        the report names typed values while a clean journal costs about one raw read.
        ``progress`` is called with the number of events read since its last call.
        """
        mine = events.c.identifier == self.identifier
        event_rows = select(*PLAIN_EVENT_COLUMNS).where(mine).order_by(events.c.seq)
        slot_rows = select(*PLAIN_SLOT_COLUMNS).where(slots.c.identifier == self.identifier)
        with self._read() as conn:
            read = conn.execute(event_rows.execution_options(yield_per=2000))
            folded = fold_rows(reported(read, progress))
            stale = drifted(conn.execute(slot_rows.execution_options(yield_per=2000)), folded)
            del folded  # the typed re-read below needs only the few stale slots
            return self._mismatches(conn, sorted(stale))

    def verify_chain(
        self, *, anchor: str | None = None, progress: Progress | None = None
    ) -> ChainReport:
        """Walk this identifier's hash chain; the first break, if any, and its head
        (:func:`calsched.journal.chain.verify_chain`)."""
        with self._read() as conn:
            return verify_chain(conn, self.identifier, anchor=anchor, progress=progress)

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
            folded.update(fold(event_from_row(row) for row in conn.execute(stmt).mappings()))
        return diff(stored, folded)

    def rebuild(self, progress: Progress | None = None) -> int:
        """Recompute the projection from the events; return the number of slots.

        ``progress`` is called with the number of events read since its last call.
        """
        with self._write() as conn:
            folded = fold(self._iter_events(conn, progress=progress))
            conn.execute(delete(slots).where(slots.c.identifier == self.identifier))
            rows = [
                {"identifier": v.identifier, "slot_id": v.slot_id, **view_values(v)}
                for v in folded.values()
            ]
            for start in range(0, len(rows), 1000):  # one executemany per thousand rows
                conn.execute(insert(slots), rows[start : start + 1000])
        return len(folded)
