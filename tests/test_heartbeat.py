"""The heartbeat loop: any failure is a failed try with backoff, never a hot or dead loop.

The loop's waits are recorded through its ``sleep`` seam instead of being slept, so these
tests are exact and take no wall time. They run on SQLite and PostgreSQL (``db_url``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from calsched.errors import BackendError, BackendRefusedError, BackendUnavailableError
from calsched.journal import Journal
from calsched.model import HeartbeatRequest, HeartbeatResponse, RejectedSlot
from calsched.scheduler import Scheduler
from calsched.scheduler.heartbeat import Heartbeat, heartbeat_cap
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost

INTERVAL = 5.0
CAP = 40.0


class ScriptedBackend(InMemoryBackend):
    """Fails the next beats with the given exceptions (any type), then answers."""

    def __init__(self) -> None:
        super().__init__()
        self.script: list[BaseException] = []

    async def heartbeat(
        self, request: HeartbeatRequest
    ) -> tuple[HeartbeatResponse, list[RejectedSlot]]:
        if self.script:
            raise self.script.pop(0)
        return await super().heartbeat(request)


@pytest.fixture
async def sched(db_url: str) -> AsyncIterator[Scheduler]:
    Journal.open(db_url, "host-a", upgrade=True).close()
    journal = Journal.open(db_url, "host-a")
    settings = SchedulerSettings(
        identifier="host-a", heartbeat_interval_s=INTERVAL, outbox_backoff_max_s=CAP
    )
    scheduler = Scheduler(settings, journal, ScriptedBackend(), InMemoryHost(["alice"]))
    await scheduler.recover()
    yield scheduler
    await scheduler.stop()
    journal.close()


def beat_of(sched: Scheduler) -> Heartbeat:
    return sched._heartbeat


def script(sched: Scheduler) -> list[BaseException]:
    backend = sched.backend
    assert isinstance(backend, ScriptedBackend)
    return backend.script


async def run_for(heartbeat: Heartbeat, beats: int) -> list[float]:
    """Run the loop for ``beats`` tries; the waits it asked for."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) >= beats:
            raise asyncio.CancelledError

    heartbeat.sleep = record
    with pytest.raises(asyncio.CancelledError):
        await heartbeat.run()
    return waits


def test_the_cap_is_never_below_the_interval() -> None:
    """A failing beat waits at most the larger of the interval and the outbox's cap."""
    assert heartbeat_cap(SchedulerSettings(heartbeat_interval_s=5, outbox_backoff_max_s=40)) == 40
    assert heartbeat_cap(SchedulerSettings(heartbeat_interval_s=90, outbox_backoff_max_s=40)) == 90


async def test_a_backend_that_keeps_failing_sees_gaps_grow_to_the_cap(sched: Scheduler) -> None:
    """Backend failures back off: the interval first, then doubling (jittered) to the cap."""
    script(sched).extend(BackendUnavailableError("HTTP 503") for _ in range(10))
    waits = await run_for(beat_of(sched), 10)
    assert waits[0] == INTERVAL
    for n, wait in enumerate(waits, start=1):
        base = min(CAP, INTERVAL * 2 ** (n - 1))
        assert max(INTERVAL, base / 2) <= wait <= base, (n, wait)
    assert waits[-1] >= CAP / 2  # reached the cap's band
    assert beat_of(sched).failures == 10
    assert sched.status().backend.last_error == "HTTP 503"


async def test_any_exception_is_a_failed_try_with_one_line(
    sched: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug-like exception neither kills the loop nor spins it: backoff and one line."""
    script(sched).extend(RuntimeError("boom") for _ in range(3))
    with caplog.at_level(logging.INFO, logger="calsched.scheduler"):
        waits = await run_for(beat_of(sched), 3)
    assert waits[0] == INTERVAL
    assert all(w >= INTERVAL for w in waits)
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage().split(";")[0] for r in lines] == [
        f"heartbeat failed (try {n}): RuntimeError: boom" for n in (1, 2, 3)
    ]
    assert all(r.exc_info is None for r in lines)  # no traceback at warning
    assert sched.status().backend.last_error == "RuntimeError: boom"


async def test_a_good_beat_resets_the_backoff(sched: Scheduler) -> None:
    """After the backend heals, the next wait is the interval again and the error clears."""
    script(sched).extend([BackendUnavailableError("HTTP 502")] * 3)
    waits = await run_for(beat_of(sched), 5)
    assert waits[3] <= INTERVAL  # beat 4 answered: the interval less the beat's own time
    assert waits[4] <= INTERVAL
    health = sched.status().backend
    assert health.last_error is None
    assert health.last_ok is not None
    assert beat_of(sched).failures == 0


async def test_a_refused_key_stays_refused_until_a_good_beat(sched: Scheduler) -> None:
    """key_refused is set by a 401/403, kept through other failures, cleared by an answer."""
    script(sched).extend([BackendRefusedError("HTTP 401"), BackendError("odd"), RuntimeError("x")])
    for _ in range(2):
        assert await sched.heartbeat_once() is False
    assert sched.status().backend.key_refused is True
    with pytest.raises(RuntimeError):
        await sched.heartbeat_once()  # once() lets the unexpected through, for run() to count
    assert await sched.heartbeat_once() is True
    assert sched.status().backend.key_refused is False


async def test_a_slow_backend_is_cut_off_at_the_deadline(db_url: str) -> None:
    """A beat with no answer within backend_deadline_s is a failed try naming the deadline."""

    class Hanging(InMemoryBackend):
        async def heartbeat(
            self, request: HeartbeatRequest
        ) -> tuple[HeartbeatResponse, list[RejectedSlot]]:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    Journal.open(db_url, "host-a", upgrade=True).close()
    journal = Journal.open(db_url, "host-a")
    settings = SchedulerSettings(identifier="host-a", backend_deadline_s=0.05)
    async with Scheduler(settings, journal, Hanging(), InMemoryHost()) as sched:
        assert await sched.heartbeat_once() is False
        assert sched.status().backend.last_error == "no answer within 0.05s"
    journal.close()


async def test_a_nudge_ends_the_wait_between_good_beats(sched: Scheduler) -> None:
    """After a good beat the loop waits the interval, unless nudged: then it beats at once.
    A nudge while failing changes nothing: the backoff stands."""
    heartbeat = beat_of(sched)
    beats: list[float] = []
    real_once = heartbeat.once

    async def counted() -> bool:
        beats.append(asyncio.get_running_loop().time())
        return await real_once()

    heartbeat.once = counted  # type: ignore[method-assign]
    running = asyncio.create_task(heartbeat.run())
    try:
        async with asyncio.timeout(2):
            while not beats:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert len(beats) == 1  # waiting INTERVAL (5 s) now
            sched.nudge()
            while len(beats) < 2:
                await asyncio.sleep(0.01)
        assert beats[1] - beats[0] < 1.0
        script(sched).append(BackendUnavailableError("HTTP 503"))
        sched.nudge()  # answered by the beat that fails
        async with asyncio.timeout(2):
            while heartbeat.failures == 0:
                await asyncio.sleep(0.01)
        sched.nudge()  # failing: ignored
        await asyncio.sleep(0.2)
        assert len(beats) == 3
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
