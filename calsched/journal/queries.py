"""The journal's reports: slots and events filtered, counted, and read as a stream.

``calsched history`` and ``calsched events`` read through these: a count for "showing N
of M", and a stream that holds one read connection and ``yield_per`` rows at a time, so
an export of a journal of any size runs in bounded memory. :class:`Queries` is the part
of :class:`~calsched.journal.store.Journal` that does it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from itertools import chain
from typing import Any, cast

from sqlalchemy import Connection, func, select

from calsched.journal.rows import event_from_row, view_from_row
from calsched.journal.schema import events, slots
from calsched.model import Event, SlotState, SlotView

__all__ = ["Progress", "Queries", "reported"]

#: Told how many more rows a long read has got through (``journal verify``'s progress).
Progress = Callable[[int], None]


def reported(result: Any, progress: Progress | None) -> Iterable[Any]:
    """The rows of a ``yield_per`` result, telling ``progress`` after each batch.

    By batch, not by row: verify's fold is the hot loop, and a call per row would cost it.
    """
    if progress is None:
        return cast(Iterable[Any], result)

    def batches() -> Iterator[Sequence[Any]]:
        for batch in result.partitions():
            yield batch
            progress(len(batch))

    return chain.from_iterable(batches())


class Queries:
    """Filtered, counted and streamed reads of one identifier's slots and events."""

    identifier: str

    def _read(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def stream_history(
        self,
        *,
        agent_id: str | None = None,
        state: SlotState | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> Generator[SlotView, None, None]:
        """Slots, newest change first, filtered by agent, state and last-change window,
        read as they are iterated (the connection is held until the iterator ends or is
        closed)."""
        stmt = (
            select(slots)
            .where(*self._history_where(agent_id, state, since, until))
            .order_by(slots.c.last_seq.desc())
        )
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as conn, conn.execute(stmt.execution_options(yield_per=1000)) as read:
            # Closed by the with, also when the caller stops early: a server-side cursor
            # (PostgreSQL) left to the garbage collector is an error there.
            for row in read.mappings():
                yield view_from_row(row)

    def count_history(
        self,
        *,
        agent_id: str | None = None,
        state: SlotState | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        """How many slots :meth:`stream_history` yields without a limit."""
        stmt = select(func.count()).select_from(slots)
        with self._read() as conn:
            found = conn.execute(stmt.where(*self._history_where(agent_id, state, since, until)))
            return int(found.scalar_one())

    def _history_where(
        self,
        agent_id: str | None,
        state: SlotState | None,
        since: datetime | None,
        until: datetime | None,
    ) -> list[Any]:
        where: list[Any] = [slots.c.identifier == self.identifier]
        if agent_id is not None:
            where.append(slots.c.agent_id == agent_id)
        if state is not None:
            where.append(slots.c.state == state.value)
        if since is not None:
            where.append(slots.c.updated_at >= since)
        if until is not None:
            where.append(slots.c.updated_at < until)
        return where

    def stream_events(
        self,
        slot_id: str | None = None,
        *,
        agent_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        last: int | None = None,
    ) -> Generator[Event, None, None]:
        """Events in ``seq`` order, filtered by slot, agent and recording time, read as
        they are iterated (the connection is held until the iterator ends or is closed).
        ``last``: only the newest ``last`` of them, still oldest first.
        """
        stmt = select(events).where(*self._event_where(slot_id, agent_id, since, until))
        if last is not None:
            newest = stmt.order_by(events.c.seq.desc()).limit(last).subquery()
            stmt = select(newest).order_by(newest.c.seq)
        else:
            stmt = stmt.order_by(events.c.seq)
        with self._read() as conn, conn.execute(stmt.execution_options(yield_per=1000)) as read:
            for row in read.mappings():
                yield event_from_row(row)

    def count_events(
        self,
        slot_id: str | None = None,
        *,
        agent_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        """How many events :meth:`stream_events` yields without ``last``."""
        stmt = select(func.count()).select_from(events)
        with self._read() as conn:
            found = conn.execute(stmt.where(*self._event_where(slot_id, agent_id, since, until)))
            return int(found.scalar_one())

    def _event_where(
        self,
        slot_id: str | None,
        agent_id: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> list[Any]:
        where: list[Any] = [events.c.identifier == self.identifier]
        if slot_id is not None:
            where.append(events.c.slot_id == slot_id)
        if agent_id is not None:
            where.append(events.c.agent_id == agent_id)
        if since is not None:
            where.append(events.c.recorded_at >= since)
        if until is not None:
            where.append(events.c.recorded_at < until)
        return where
