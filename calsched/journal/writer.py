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
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Connection, Engine

from calsched.errors import JournalUnavailableError
from calsched.journal.availability import Availability
from calsched.journal.engine import writing
from calsched.journal.store import REFUSALS

__all__ = ["GroupWriter", "Post", "Waiter", "Work"]

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
log = logging.getLogger("calsched.journal")

#: What a caller hands the writer: a function of the open write transaction.
Work = Callable[[Connection], T]


class Waiter(Protocol[T_contra]):
    """What :meth:`GroupWriter.submit_waiter` settles: an ``asyncio.Future``, typically."""

    def cancelled(self) -> bool:
        """Whether the waiter gave up (its outcome is then dropped)."""
        ...

    def set_result(self, result: T_contra, /) -> None:
        """The work committed and returned ``result``."""
        ...

    def set_exception(self, exception: BaseException, /) -> None:
        """The work failed (or its transaction did)."""
        ...


#: Runs a callback with one argument on the waiter's side: ``loop.call_soon_threadsafe``.
Post = Callable[[Callable[[Any], None], Any], object]


@dataclass(slots=True)
class _Item(Generic[T]):
    work: Work[T]
    future: Future[T] | None = None
    #: For :meth:`GroupWriter.submit_waiter`: the caller's waiter and how to reach it.
    waiter: Waiter[T] | None = None
    post: Post | None = None

    def runnable(self) -> bool:
        # A waiter is never skipped: its caller shields it, and a commit must land in
        # the caller's done-callbacks even if the caller stopped waiting.
        return self.future is None or self.future.set_running_or_notify_cancel()


def _settle_all(outcomes: list[tuple[Waiter[Any], bool, Any]]) -> None:
    """On the waiters' side (their event loop): each its outcome, in commit order."""
    for waiter, ok, value in outcomes:
        if waiter.cancelled():
            continue
        if ok:
            waiter.set_result(value)
        else:
            waiter.set_exception(value)


_STOP = object()


class GroupWriter:
    """The one thread that writes to the journal, committing waiting work in groups.

    ``max_group`` bounds how much one transaction takes, so a flood of writers cannot
    hold the database lock for long. ``check`` runs first in every transaction (the
    journal's lease fence, :meth:`~calsched.journal.store.Journal.check_fence`): what it
    raises fails every piece of work of that group, none of which ran.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_group: int = 512,
        name: str = "calsched-journal",
        check: Callable[[Connection], None] | None = None,
    ) -> None:
        self._engine = engine
        self._check = check
        self._max_group = max_group
        self._queue: queue.SimpleQueue[_Item[Any] | object] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        #: Transactions committed and the work they carried, for metrics and tests.
        self.groups = 0
        self.items = 0
        #: Says once when writes start failing for a passing fault, and when they recover.
        self.availability = Availability()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Work[T]) -> Future[T]:
        """Queue ``work``; the future holds its result once its transaction committed."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the journal writer is closed")
            self._queue.put(_Item(work, future=future))
        return future

    def submit_waiter(self, work: Work[T], waiter: Waiter[T], post: Post) -> None:
        """Like :meth:`submit`, settling ``waiter`` through ``post`` (for an event loop:
        its future and ``loop.call_soon_threadsafe``).

        The outcomes of one group reach one ``post`` in one call, not one per caller:
        each wake-up of a loop from a thread costs a system call and a hand-over of the
        GIL, which under load cost more than the writes themselves.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the journal writer is closed")
            self._queue.put(_Item(work, waiter=waiter, post=post))

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
            live = [item for item in group if item.runnable()]
            if not live:
                continue
            try:
                self._commit(live)
            except Exception:  # a bug here must not leave the journal without a writer
                log.exception("the journal writer failed on a group of %d writes", len(live))

    def _commit(self, group: list[_Item[Any]]) -> None:
        if len(group) == 1:
            self._settle([self._alone(group[0])])
            return
        outcomes: list[tuple[_Item[Any], bool, Any]] = []
        began = False
        try:
            with writing(self._engine, "journal", check=self._check) as conn:
                began = True
                for item in group:
                    try:
                        outcomes.append((item, True, item.work(conn)))
                    except REFUSALS as exc:  # raised before it wrote: the others go on
                        outcomes.append((item, False, exc))
        except Exception as exc:
            if not began:  # no transaction at all (locked, unreachable): nobody's work ran
                self._settle([(item, False, exc) for item in group])
                return
            # The group is rolled back: each on its own again, to get its own outcome.
            log.info("group of %d writes rolled back (%s); retrying one by one", len(group), exc)
            self._settle([self._alone(item) for item in group])
            return
        self.groups += 1
        self.items += len(group)
        self._settle(outcomes)

    def _alone(self, item: _Item[Any]) -> tuple[_Item[Any], bool, Any]:
        try:
            with writing(self._engine, "journal", check=self._check) as conn:
                result = item.work(conn)
        except BaseException as exc:  # the caller's own outcome, whatever it is
            return (item, False, exc)
        self.groups += 1
        self.items += 1
        return (item, True, result)

    def _settle(self, outcomes: list[tuple[_Item[Any], bool, Any]]) -> None:
        by_post: defaultdict[Post, list[Any]] = defaultdict(list)
        for item, ok, value in outcomes:
            if isinstance(value, JournalUnavailableError):
                self.availability.failed(value)
            elif ok:
                self.availability.committed()
            if item.future is not None:
                if ok:
                    item.future.set_result(value)
                else:
                    item.future.set_exception(value)
            else:
                assert item.post is not None
                by_post[item.post].append((item.waiter, ok, value))
        for post, batch in by_post.items():
            try:
                post(_settle_all, batch)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                log.warning("journal writes committed after their event loop closed")
