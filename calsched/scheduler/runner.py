"""The scheduler's own lifecycle: its two loops (heartbeat, outbox) started once, and a
graceful stop.

A stop ends the beats, waits up to ``shutdown_grace_s`` for wakes in flight (one
abandoned here leaves its slot ``dispatching``, re-dispatched at the next start), flushes
what the outbox can within the same bound, and closes the journal's writer: nothing
committed is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from calsched.scheduler.dispatcher import Dispatcher
from calsched.scheduler.gateway import JournalGateway
from calsched.scheduler.heartbeat import Heartbeat
from calsched.scheduler.outbox import OutboxWorker
from calsched.settings import SchedulerSettings


async def _drain(tasks: Iterable[asyncio.Task[Any]], deadline: float) -> None:
    """Wait for ``tasks`` until ``deadline`` (loop time), then cancel the late ones."""
    pending = {t for t in tasks if not t.done()}
    if not pending:
        return
    timeout = max(0.0, deadline - asyncio.get_running_loop().time())
    _, late = await asyncio.wait(pending, timeout=timeout)
    for task in late:
        task.cancel()
    if late:
        await asyncio.gather(*late, return_exceptions=True)


class Runner:
    """Starts one scheduler's loops, waits for it to go idle, and stops it."""

    def __init__(
        self,
        settings: SchedulerSettings,
        gateway: JournalGateway,
        heartbeat: Heartbeat,
        dispatch: Dispatcher,
        outbox: OutboxWorker,
    ) -> None:
        self._settings = settings
        self._gateway = gateway
        self._heartbeat = heartbeat
        self._dispatch = dispatch
        self._outbox = outbox
        self._loops: list[asyncio.Task[None]] = []
        self._started = False
        #: Set once a stop began.
        self.stopped = asyncio.Event()

    async def start(self, recover: Callable[[], Awaitable[None]]) -> None:
        """``recover``, then start the heartbeat loop and the outbox worker (once)."""
        if self._started:
            return
        self._started = True
        await recover()
        self._loops = [
            asyncio.create_task(self._heartbeat.run(), name="calsched-heartbeat"),
            asyncio.create_task(self._outbox.run(), name="calsched-outbox"),
        ]

    async def stop(self, *, flush: bool) -> None:
        """Stop gracefully (once); without ``flush``, nothing more goes to the backend."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        self._dispatch.stopped = True
        deadline = asyncio.get_running_loop().time() + self._settings.shutdown_grace_s
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        await _drain(self._dispatch.wakes, deadline)
        if flush:
            with contextlib.suppress(Exception):
                await self._outbox.flush(deadline)
        await _drain(self._outbox.deliveries, deadline)
        await self._gateway.close()

    async def idle(self) -> None:
        """Wait until no wake is in flight and the outbox has nothing due right now."""
        # asyncio.wait, not gather: cancelling idle() must not cancel the wakes themselves.
        while True:
            if self._dispatch.wakes:
                await asyncio.wait(self._dispatch.wakes)
                continue
            started = await self._outbox.pass_once()
            if self._outbox.deliveries:
                await asyncio.wait(self._outbox.deliveries)
                continue
            if started:
                continue  # they finished already: their slots' next rows may be due
            if not self._dispatch.wakes:
                await self._outbox.refresh_counts()
                return
