"""The journal gateway: the one way the scheduler reaches the journal.

Writes go through the group-committing writer (:mod:`calsched.journal.writer`) and
return once they committed; reads run on reader threads, never on the event loop; and
every committed transition reaches the live view through one callback, run in the
commit's done-callback, so the view equals the journal even when the task that asked
for the commit is cancelled while it is in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from calsched.errors import AgentBusyError, InvalidTransitionError, SlotNotFoundError
from calsched.journal import Journal, TransitionRequest
from calsched.journal.store import Applied
from calsched.journal.writer import GroupWriter, Work
from calsched.scheduler.coalesce import Coalescer, Outcome

__all__ = ["JournalGateway"]

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("calsched.scheduler")


class JournalGateway:
    """Reads, writes and commits of one scheduler's journal, off the event loop.

    ``on_applied`` is called on the event loop with every committed :class:`Applied`, in
    commit order; ``after_commit`` is the crash harness's seam, called once the caller
    is told.
    """

    def __init__(
        self,
        journal: Journal,
        on_applied: Callable[[Applied], None],
        after_commit: Callable[[], None],
    ) -> None:
        self.journal = journal
        self._on_applied = on_applied
        self._after_commit = after_commit
        #: The group writer (its ``groups``/``items`` counters show how well it groups).
        self.writer = GroupWriter(journal.engine, check=journal.check_fence)
        # Reads never queue behind the writer; WAL lets them run beside a commit.
        self._reader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="calsched-read")
        self._coalescers: list[Coalescer[Any, Any]] = []
        #: Transitions settled one per caller, committed in batches (:meth:`settle`).
        self.settler = self.coalescer(self._settle_batch)

    def coalescer(
        self, flush: Callable[[list[T]], Awaitable[Sequence[Outcome[R]]]]
    ) -> Coalescer[T, R]:
        """A :class:`Coalescer` whose batches :meth:`close` waits for: a batch handed in
        before closing is written before the writer stops."""
        made: Coalescer[T, R] = Coalescer(flush)
        self._coalescers.append(made)
        return made

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a journal read on a reader thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, partial(fn, *args, **kwargs))

    async def write(self, work: Work[T]) -> T:
        """Run a journal write through the group writer; return once it committed."""
        # A cancelled caller must not turn a commit into an unknown outcome: the writer
        # finishes either way, and shield lets the result land.
        return await asyncio.shield(self._submit(work))

    async def commit(self, requests: Sequence[TransitionRequest]) -> Applied:
        """Commit transitions in one transaction; the live view takes their projection."""
        return await self.commit_work(partial(self.journal.apply_in, requests=list(requests)))

    async def commit_work(self, work: Work[Applied]) -> Applied:
        """Commit ``work``; its :class:`Applied` reaches ``on_applied`` whatever the caller
        does meanwhile."""
        applied = await self._commit_quietly(work)
        self._after_commit()
        return applied

    async def settle(self, request: TransitionRequest) -> Applied:
        """Commit one transition in a batch with the others settled meanwhile.

        For many independent callers whose transitions end together (wake outcomes):
        their requests share one write pass (:meth:`Journal.apply_each_in`), and each
        caller gets its own outcome: a refusal is raised to its caller alone, and the
        rest commit. Returns the whole batch's :class:`Applied` (``Applied.view`` gives
        the caller's slot).
        """
        applied = await self.settler(request)
        self._after_commit()
        return applied

    async def _settle_batch(self, requests: list[TransitionRequest]) -> list[Outcome[Applied]]:
        future = self._submit(partial(self.journal.apply_each_in, requests=requests))
        future.add_done_callback(self._applied_each)
        try:
            applied, refusals = await asyncio.shield(future)
        except Exception as exc:
            # The batch rolled back (a database error): each request again in a write of
            # its own, so each caller gets its own outcome.
            log.info("batch of %d settles failed (%s); one by one", len(requests), exc)
            return await asyncio.gather(
                *(
                    self._commit_quietly(partial(self.journal.apply_in, requests=[r]))
                    for r in requests
                ),
                return_exceptions=True,
            )
        return [applied if refused is None else refused for refused in refusals]

    async def _commit_quietly(self, work: Work[Applied]) -> Applied:
        future = self._submit(work)
        future.add_done_callback(self._applied)
        return await asyncio.shield(future)

    async def commit_tolerant(self, requests: Sequence[TransitionRequest]) -> set[str]:
        """Commit a batch; if one request no longer fits, commit each on its own.

        Returns the slots whose requests committed. On their own, the requests still
        share the group writer's commits, each failing alone.
        """
        try:
            await self.commit(requests)
            return {r.slot_id for r in requests}
        except (InvalidTransitionError, AgentBusyError, SlotNotFoundError) as exc:
            log.info("batch did not fit (%s); committing one by one", exc)
        # Tasks are started in order, so the writer takes the requests in order.
        outcomes = await asyncio.gather(
            *(self.commit([r]) for r in requests), return_exceptions=True
        )
        done: set[str] = set()
        for request, outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, InvalidTransitionError | AgentBusyError | SlotNotFoundError):
                log.warning("skipped %s of slot %s: %s", request.trigger, request.slot_id, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                done.add(request.slot_id)
        return done

    async def close(self) -> None:
        """Finish the queued writes, then stop the writer and the readers."""
        for coalescer in self._coalescers:
            await coalescer.drain()
        await asyncio.to_thread(self.writer.close)
        await asyncio.to_thread(self._reader.shutdown, True)

    def _submit(self, work: Work[T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        self.writer.submit_waiter(work, waiter, loop.call_soon_threadsafe)
        return waiter

    def _applied(self, future: asyncio.Future[Applied]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        self._on_applied(future.result())

    def _applied_each(self, future: asyncio.Future[tuple[Applied, list[Exception | None]]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        self._on_applied(future.result()[0])
