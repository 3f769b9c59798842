"""Tests for calsched.scheduler.runner: the loops started once, the graceful stop."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from calsched.scheduler.runner import Runner
from calsched.settings import SchedulerSettings


class Pieces:
    """Stand-ins for the gateway, heartbeat, dispatcher and outbox, recording each call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.dispatch = SimpleNamespace(wakes=[], stopped=False)
        self.gateway = SimpleNamespace(close=self._record("close"))
        self.heartbeat = SimpleNamespace(run=self._forever)
        self.outbox = SimpleNamespace(run=self._forever, flush=self._record("flush"), deliveries=[])

    def _record(self, name: str) -> Any:
        async def call(*args: object) -> None:
            self.calls.append(name)

        return call

    async def _forever(self) -> None:
        await asyncio.Event().wait()

    def runner(self, grace_s: float = 1.0) -> Runner:
        settings = SchedulerSettings(identifier="host-a", shutdown_grace_s=grace_s)
        return Runner(settings, self.gateway, self.heartbeat, self.dispatch, self.outbox)  # type: ignore[arg-type]


async def test_start_recovers_and_starts_the_loops_once() -> None:
    """A second start does nothing: one recovery, two loops."""
    pieces = Pieces()
    runner = pieces.runner()
    recovered: list[int] = []

    async def recover() -> None:
        recovered.append(1)

    await runner.start(recover)
    await runner.start(recover)
    assert recovered == [1]
    assert len(runner._loops) == 2
    await runner.stop(flush=True)


async def test_stop_flushes_closes_and_happens_once() -> None:
    """Stop cancels the loops, flushes the outbox, closes the gateway; a second stop is a no-op."""
    pieces = Pieces()
    runner = pieces.runner()
    await runner.start(pieces._record("recover"))
    loops = list(runner._loops)
    await runner.stop(flush=True)
    await runner.stop(flush=True)
    assert all(loop.cancelled() for loop in loops)
    assert pieces.dispatch.stopped
    assert runner.stopped.is_set()
    assert pieces.calls == ["recover", "flush", "close"]


async def test_stop_without_flush_sends_nothing_more() -> None:
    """Stepping down (``flush=False``) leaves the outbox to the new holder."""
    pieces = Pieces()
    await pieces.runner().stop(flush=False)
    assert pieces.calls == ["close"]


async def test_a_wake_past_the_grace_is_cancelled() -> None:
    """A wake still running at ``shutdown_grace_s`` is abandoned, not awaited."""
    pieces = Pieces()
    wake = asyncio.create_task(asyncio.sleep(60))
    pieces.dispatch.wakes = [wake]
    await pieces.runner(grace_s=0.05).stop(flush=True)
    assert wake.cancelled()
