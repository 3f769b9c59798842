"""Tests for calsched.scheduler.readiness, over a real scheduler on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from calsched.errors import BackendUnavailableError, JournalUnavailableError
from calsched.journal import Journal
from calsched.scheduler import Scheduler
from calsched.scheduler import readiness as readiness_module
from calsched.settings import SchedulerSettings
from calsched.status import LeaseStatus
from calsched.testing import InMemoryBackend, InMemoryHost

T0 = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _lease(state: str = "held", *, expires: datetime = T0 + timedelta(hours=1)) -> LeaseStatus:
    return LeaseStatus(
        state=state,  # type: ignore[arg-type]
        lost="a newer epoch wrote" if state == "lost" else None,
        epoch=3,
        host="web-1",
        pid=42,
        since=T0,
        renewed_at=T0,
        expires_at=expires,
        locked=True,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend() -> InMemoryBackend:
    return InMemoryBackend()


@pytest.fixture
def lease() -> list[LeaseStatus]:
    """The lease status the scheduler reports (the test replaces element 0)."""
    return [_lease()]


@pytest.fixture
async def sched(
    journal: Journal, backend: InMemoryBackend, clock: Clock, lease: list[LeaseStatus]
) -> AsyncIterator[Scheduler]:
    settings = SchedulerSettings(identifier="host-a", heartbeat_interval_s=10, backend_deadline_s=5)
    made = Scheduler(
        settings, journal, backend, InMemoryHost(), clock=clock, lease_status=lambda: lease[0]
    )
    await made.recover()
    try:
        yield made
    finally:
        await made.stop()


async def test_ready_after_a_good_heartbeat(sched: Scheduler) -> None:
    assert await sched.heartbeat_once()
    ready = await sched.readiness()
    assert ready.ready
    assert list(ready.checks) == ["journal", "lease", "backend"]
    assert ready.failing == []
    assert ready.checks["lease"].detail == "held, epoch 3"
    assert ready.checks["backend"].detail == "last successful heartbeat 0.0s ago"


async def test_not_ready_before_the_first_heartbeat(sched: Scheduler) -> None:
    ready = await sched.readiness()
    assert not ready.ready
    assert ready.failing == ["backend"]
    assert ready.checks["backend"].detail == "no successful heartbeat: none yet"
    assert ready.checks["journal"].ok


async def test_backend_late_after_three_intervals_and_a_deadline(
    sched: Scheduler, backend: InMemoryBackend, clock: Clock
) -> None:
    assert await sched.heartbeat_once()
    backend.fail_heartbeat(BackendUnavailableError("503 from the backend"), times=10)
    clock.now = T0 + timedelta(seconds=35)  # 3 x 10 s + 5 s: the limit itself still passes
    assert not await sched.heartbeat_once()
    assert (await sched.readiness()).ready
    clock.now = T0 + timedelta(seconds=35.5)
    ready = await sched.readiness()
    assert ready.failing == ["backend"]
    assert ready.checks["backend"].detail == "last successful heartbeat 35.5s ago (limit 35s)"
    # The backend's error text is the operator's (status), not the probe's.
    assert "503" not in ready.model_dump_json()


async def test_a_lost_or_expired_lease_is_not_ready(
    sched: Scheduler, clock: Clock, lease: list[LeaseStatus]
) -> None:
    assert await sched.heartbeat_once()
    lease[0] = _lease("lost")
    ready = await sched.readiness()
    assert ready.failing == ["lease"]
    assert ready.checks["lease"].detail == "lost: a newer epoch wrote"
    lease[0] = _lease(expires=clock.now)
    assert (await sched.readiness()).checks["lease"].detail == "expired: not renewed in time"


async def test_journal_write_episode_is_not_ready(sched: Scheduler) -> None:
    assert await sched.heartbeat_once()
    availability = sched._gateway.writer.availability
    availability.failed(JournalUnavailableError("journal", "disk full", "database or disk is full"))
    ready = await sched.readiness()
    assert ready.failing == ["journal"]
    assert ready.checks["journal"].detail == "writes fail: disk full"
    availability.committed()
    assert (await sched.readiness()).ready


async def test_journal_read_failing_or_hanging_is_not_ready(
    sched: Scheduler, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await sched.heartbeat_once()

    def unavailable() -> None:
        raise JournalUnavailableError("journal", "database unreachable", "connection refused")

    monkeypatch.setattr(journal, "ping", unavailable)
    ready = await sched.readiness()
    assert ready.checks["journal"].detail == "reads fail: database unreachable"

    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def hangs() -> None:
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=10)

    monkeypatch.setattr(journal, "ping", hangs)
    monkeypatch.setattr(readiness_module, "READ_TIMEOUT_S", 0.05)
    try:
        ready = await sched.readiness()
    finally:
        release.set()
    assert ready.failing == ["journal"]
    assert ready.checks["journal"].detail == "no answer to a read in 0.05s"


async def test_without_a_lease_there_is_no_lease_check(
    journal: Journal, backend: InMemoryBackend
) -> None:
    sched = Scheduler(SchedulerSettings(identifier="host-a"), journal, backend, InMemoryHost())
    try:
        await sched.recover()
        assert await sched.heartbeat_once()
        ready = await sched.readiness()
    finally:
        await sched.stop()
    assert list(ready.checks) == ["journal", "backend"]
    assert ready.ready
