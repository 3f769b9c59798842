"""Group commit: one writer thread commits every write waiting for it in one transaction.

A durable commit costs an fsync; a caller alone pays for it, and 64 callers queued behind
one another would pay 64 times. :class:`GroupWriter` takes every piece of work that is
waiting when it comes round, runs them one after another inside one transaction, and
commits once; each caller's future resolves only after that commit.

A piece of work that does not fit (a :data:`~calsched.journal.store.REFUSALS` error:
invalid transition, busy agent, unknown slot) raises before it writes anything: the
journal decides before it writes. So its caller alone gets the error and the group
commits without it. Any other failure (a database error, a bug) rolls the whole group
back; then each piece runs again in a transaction of its own, so every caller gets its
own outcome and nobody's commit is lost to a neighbour's fault.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

from calsched.journal.engine import writing
from calsched.journal.store import REFUSALS

__all__ = ["GroupWriter", "Work"]

T = TypeVar("T")
log = logging.getLogger("calsched.journal")

#: What a caller hands the writer: a function of the open write transaction.
Work = Callable[[Connection], T]


@dataclass(slots=True)
class _Item(Generic[T]):
    work: Work[T]
    future: Future[T]


_STOP = object()


class GroupWriter:
    """The one thread that writes to the journal, committing waiting work in groups.

    ``max_group`` bounds how much one transaction takes, so a flood of writers cannot
    hold the database lock for long.
    """

    def __init__(
        self, engine: Engine, *, max_group: int = 512, name: str = "calsched-journal"
    ) -> None:
        self._engine = engine
        self._max_group = max_group
        self._queue: queue.SimpleQueue[_Item[Any] | object] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        #: Transactions committed and the work they carried, for metrics and tests.
        self.groups = 0
        self.items = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Work[T]) -> Future[T]:
        """Queue ``work``; the future holds its result once its transaction committed."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the journal writer is closed")
            self._queue.put(_Item(work, future))
        return future

    def close(self, *, wait: bool = True) -> None:
        """Finish the work already queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if wait:
            self._thread.join()

    # -- the writer thread -----------------------------------------------------------------

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            group: list[_Item[Any]] = [first]  # type: ignore[list-item]
            while len(group) < self._max_group:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                    break
                group.append(more)  # type: ignore[arg-type]
            live = [item for item in group if item.future.set_running_or_notify_cancel()]
            if live:
                self._commit(live)

    def _commit(self, group: list[_Item[Any]]) -> None:
        if len(group) == 1:
            self._alone(group[0])
            return
        outcomes: list[tuple[_Item[Any], bool, Any]] = []
        began = False
        try:
            with writing(self._engine, "journal") as conn:
                began = True
                for item in group:
                    try:
                        outcomes.append((item, True, item.work(conn)))
                    except REFUSALS as exc:  # raised before it wrote: the others go on
                        outcomes.append((item, False, exc))
        except Exception as exc:
            if not began:  # no transaction at all (locked, unreachable): nobody's work ran
                for item in group:
                    item.future.set_exception(exc)
                return
            # The group is rolled back: each on its own again, to get its own outcome.
            log.info("group of %d writes rolled back (%s); retrying one by one", len(group), exc)
            for item in group:
                self._alone(item)
            return
        self.groups += 1
        self.items += len(group)
        for item, ok, value in outcomes:
            if ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(value)

    def _alone(self, item: _Item[Any]) -> None:
        try:
            with writing(self._engine, "journal") as conn:
                result = item.work(conn)
        except BaseException as exc:  # the caller's own outcome, whatever it is
            item.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.groups += 1
        self.items += 1
        item.future.set_result(result)
