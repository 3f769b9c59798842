"""Coalescing: many callers' small writes handed to the journal as one.

Ten thousand wakes ending within a second each want one transition committed; ten
thousand deliveries each want their outbox row marked. One write per caller costs a
writer round trip, a statement and a future each, which under a burst cost more than the
commits themselves. A :class:`Coalescer` takes one item per caller and flushes what has
gathered as one batch: the first item goes out on the next turn of the event loop, and
items arriving while a flush is in flight go out together in the next, so a batch is
exactly what piled up during one commit (group commit, one level up).

The flush function returns one outcome per item, so one item's failure is its caller's
alone; each caller gets its own outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeAlias, TypeVar, Union

__all__ = ["Coalescer", "Outcome"]

T = TypeVar("T")
R = TypeVar("R")

#: A flushed item's outcome: its result, or the exception its caller gets.
Outcome: TypeAlias = Union[R, BaseException]  # noqa: UP007 (a generic alias)


class Coalescer(Generic[T, R]):
    """Hands items to ``flush`` in batches, one batch in flight at a time.

    ``flush`` gets the items in arrival order and returns one outcome per item, in the
    same order (an exception instance for an item that failed). If ``flush`` itself
    raises, every item of that batch gets the exception.
    """

    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[Outcome[R]]]]) -> None:
        self._flush = flush
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        #: Batches flushed and the items they carried, for metrics and tests.
        self.batches = 0
        self.items = 0

    async def __call__(self, item: T) -> R:
        """Queue ``item`` for the next batch; return its outcome once flushed.

        A caller cancelled meanwhile does not withdraw its item: a write handed over is
        finished either way (only the caller stops waiting for its outcome).
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, waiter))
        if self._task is None:
            self._task = loop.create_task(self._run(), name="calsched-coalesce")
        # No shield: cancelling the caller cancels only its waiter, which the batch
        # skips when it settles; the item itself stays in its batch.
        return await waiter

    async def drain(self) -> None:
        """Wait until every item handed in so far has been flushed."""
        while self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    async def _run(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                outcomes: Sequence[Outcome[R]]
                try:
                    outcomes = await self._flush([item for item, _ in batch])
                    if len(outcomes) != len(batch):
                        raise RuntimeError("a flush returned the wrong number of outcomes")
                except Exception as exc:  # the batch's callers hear it; the next batch goes on
                    outcomes = [exc] * len(batch)
                self.batches += 1
                self.items += len(batch)
                for (_, waiter), outcome in zip(batch, outcomes, strict=True):
                    if waiter.done():  # its caller was cancelled
                        continue
                    if isinstance(outcome, BaseException):
                        waiter.set_exception(outcome)
                    else:
                        waiter.set_result(outcome)
                batch = []
        finally:
            # Only if this task itself was cancelled (the loop shutting down): no caller
            # is left waiting for ever.
            self._task = None
            for _, waiter in [*batch, *self._pending]:
                if not waiter.done():
                    waiter.set_exception(RuntimeError("the batch was not flushed"))
            self._pending = []
