"""The outbox worker when the journal itself fails: bounded posts, one line a step.

A journal write failing after the post ("disk I/O error") once made the same row be
posted on every poll (570 log lines in 30 s). Now the worker holds every delivery for a
backoff step of its own, says so once, and resumes by itself. The clock is a fake, so
the steps are exact. Runs on SQLite and PostgreSQL (``db_url``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection

from calsched.backend.http import HttpBackend
from calsched.errors import BackendRejectedError, JournalError
from calsched.journal import Journal
from calsched.model import Slot, utcnow
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost


@dataclass
class FakeClock:
    """Now, moved by hand."""

    at: datetime = field(default_factory=utcnow)

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@dataclass
class Disk:
    """Fails every outbox mark (one row or a batch) like a full disk while ``broken``."""

    broken: bool = True
    failed: int = 0


@pytest.fixture
async def rig(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Scheduler, InMemoryBackend, FakeClock, Disk]]:
    Journal.open(db_url, "host-a", upgrade=True).close()
    clock = FakeClock()
    journal = Journal.open(db_url, "host-a", clock=clock)  # one clock for rows and worker
    disk = Disk()
    real = journal.mark_delivered_in

    def mark(conn: Connection, row_id: int, note: str | None = None) -> None:
        if disk.broken:
            disk.failed += 1
            raise JournalError("journal write failed: disk I/O error")
        real(conn, row_id, note)

    real_many = journal.mark_delivered_many_in

    def mark_many(conn: Connection, row_ids: list[int]) -> None:
        if disk.broken:
            disk.failed += 1
            raise JournalError("journal write failed: disk I/O error")
        real_many(conn, row_ids)

    monkeypatch.setattr(journal, "mark_delivered_in", mark)
    monkeypatch.setattr(journal, "mark_delivered_many_in", mark_many)
    backend = InMemoryBackend([Slot(id="s1", agent_id="alice", title="report")])
    settings = SchedulerSettings(
        identifier="host-a", outbox_backoff_initial_s=1.0, outbox_backoff_max_s=8.0
    )
    sched = Scheduler(settings, journal, backend, InMemoryHost(), clock=clock)
    await sched.recover()
    yield sched, backend, clock, disk
    await sched.stop()
    journal.close()


async def settle(sched: Scheduler) -> None:
    """Idle, bounded: a worker that re-posts forever fails the test instead of hanging it."""
    async with asyncio.timeout(10):
        await sched.idle()


def posts(backend: InMemoryBackend) -> int:
    return len(backend.updates) + backend.replays


def held_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "journal unavailable" in r.getMessage()]


async def test_a_failing_mark_after_the_post_holds_the_outbox(
    rig: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """One post and one line per backoff step while the journal fails; then it resumes."""
    sched, backend, clock, disk = rig
    with caplog.at_level(logging.INFO, logger="calsched.scheduler"):
        await sched.heartbeat_once()
        for _ in range(20):  # twenty polls within the first step: still one post
            await settle(sched)
        assert posts(backend) == 1
        assert disk.failed == 2  # the batch, then the row alone
        assert len(held_lines(caplog)) == 1
        assert "disk I/O error" in held_lines(caplog)[0]

        clock.advance(1.0)  # past the first step (at most 1 s): one more post, held again
        for _ in range(20):
            await settle(sched)
        assert posts(backend) == 2
        assert backend.replays == 1  # the same idempotency key: the backend drops it
        assert len(held_lines(caplog)) == 2

        disk.broken = False
        clock.advance(8.0)
        await settle(sched)
    assert posts(backend) == 3
    assert len(backend.updates) == 1  # delivered once, after dedupe
    assert sched.journal.outbox_counts().pending == 0
    assert any("journal available again" in r.getMessage() for r in caplog.records)


async def test_the_hold_doubles_while_the_journal_keeps_failing(rig: Any) -> None:
    """Each failed step waits longer, up to outbox_backoff_max_s: posts grow ~log(time)."""
    sched, backend, clock, _ = rig
    await sched.heartbeat_once()
    await settle(sched)
    for _ in range(60):  # one simulated minute, polled every second
        clock.advance(1.0)
        await settle(sched)
    # Steps of 1, 2, 4, 8, 8, ... s, each at least half that (equal jitter), seen at 1 s
    # polls: at most 1 + 3 + 56 / 4 = 18 posts in the minute; without the hold, 61.
    assert 5 <= posts(backend) <= 18


async def test_a_failing_outbox_read_is_held_too(
    rig: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's loop survives a failing read: one line, a hold, no traceback flood."""
    sched, _, _, _ = rig

    def unreadable(*args: object, **kwargs: object) -> None:
        raise JournalError("journal read failed: disk I/O error")

    monkeypatch.setattr(sched.journal, "due_outbox", unreadable)
    with caplog.at_level(logging.INFO, logger="calsched.scheduler"):
        with pytest.raises(JournalError):
            await sched._outbox.pass_once()
        sched._outbox.hold.failed(JournalError("journal read failed: disk I/O error"))
    assert sched._outbox.hold.held
    assert await sched._outbox.pass_once() == 0  # held: nothing read, nothing started
    assert len(held_lines(caplog)) == 1


def http_rig(
    journal: Journal, clock: FakeClock, answer: httpx.Response
) -> tuple[Scheduler, list[str]]:
    """A scheduler on an HttpBackend whose status posts all get ``answer``; the posts."""
    posted: list[str] = []
    listing = {"slots_to_fire": [{"id": "s1", "agent_id": "alice", "title": "report"}]}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/heartbeat"):
            return httpx.Response(200, json=listing)
        posted.append(request.url.path)
        return answer

    backend = HttpBackend("http://backend.test", "k-secret", transport=httpx.MockTransport(handle))
    settings = SchedulerSettings(identifier="host-a", outbox_backoff_max_s=60.0)
    return Scheduler(settings, journal, backend, InMemoryHost(), clock=clock), posted


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(409, content=b"[" * 100_000),
        httpx.Response(503, headers={"Retry-After": "1e12"}),
    ],
    ids=["409 too deep to parse", "Retry-After 1e12"],
)
async def test_a_backend_answer_that_broke_the_worker_costs_a_handful_of_posts(
    db_url: str, answer: httpx.Response
) -> None:
    """Each once made a hot loop (150-200 posts a second); now a minute sees at most two."""
    Journal.open(db_url, "host-a", upgrade=True).close()
    clock = FakeClock()
    journal = Journal.open(db_url, "host-a", clock=clock)
    sched, posted = http_rig(journal, clock, answer)
    await sched.recover()
    start = clock()
    await sched.heartbeat_once()
    for _ in range(60):  # a simulated minute, polled every second
        await settle(sched)
        clock.advance(1.0)
    assert 1 <= len(posted) <= 2, posted
    (row,) = journal.outbox_rows(slot_id="s1")
    if answer.status_code == 409:  # too deep to read: a rejection, dead-lettered at once
        assert (len(posted), row.dead_at) == (1, start)
    else:  # the absurd Retry-After waits the cap, exactly: the next try is at +60 s
        assert row.next_try_at == start + timedelta(seconds=60)
    await sched.stop()
    journal.close()


# -- what the worker tells ---------------------------------------------------------------


@pytest.fixture
async def plain(db_url: str) -> AsyncIterator[tuple[Scheduler, InMemoryBackend]]:
    """A scheduler whose outbox works; s1 (agent alice) is fired on its first beat."""
    Journal.open(db_url, "host-a", upgrade=True).close()
    journal = Journal.open(db_url, "host-a")
    backend = InMemoryBackend([Slot(id="s1", agent_id="alice", title="report")])
    sched = Scheduler(SchedulerSettings(identifier="host-a"), journal, backend, InMemoryHost())
    await sched.recover()
    yield sched, backend
    await sched.stop()
    journal.close()


def outbox_lines(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "calsched.scheduler" and r.msg == event]


async def test_a_delivery_is_told_once_after_it_is_marked(
    plain: tuple[Scheduler, InMemoryBackend], caplog: pytest.LogCaptureFixture
) -> None:
    """outbox delivered, at info, with the slot, row, status and attempt."""
    sched, _ = plain
    caplog.set_level(logging.INFO, logger="calsched.scheduler")
    await sched.heartbeat_once()
    await settle(sched)
    (line,) = outbox_lines(caplog, "outbox delivered")
    assert line.levelno == logging.INFO
    fields = {k: line.__dict__[k] for k in ("slot_id", "status", "attempt", "tries")}
    assert fields == {"slot_id": "s1", "status": "in_progress", "attempt": 1, "tries": 1}


async def test_a_dead_letter_is_told_once_as_an_error(
    plain: tuple[Scheduler, InMemoryBackend], caplog: pytest.LogCaptureFixture
) -> None:
    """A rejected update: one error line naming the slot and the backend's answer."""
    sched, backend = plain
    caplog.set_level(logging.INFO, logger="calsched.scheduler")
    backend.fail_status(BackendRejectedError("HTTP 404: no such slot", status_code=404))
    await sched.heartbeat_once()
    await settle(sched)
    (line,) = outbox_lines(caplog, "outbox dead letter")
    assert line.levelno == logging.ERROR
    assert (line.slot_id, line.status) == ("s1", "in_progress")  # type: ignore[attr-defined]
    assert "no such slot" in line.error  # type: ignore[attr-defined]
    assert outbox_lines(caplog, "outbox delivered") == []


async def test_a_reconcile_is_told_once(
    plain: tuple[Scheduler, InMemoryBackend], caplog: pytest.LogCaptureFixture
) -> None:
    """A 409: one warning with what was sent and what the backend holds."""
    sched, backend = plain
    caplog.set_level(logging.INFO, logger="calsched.scheduler")
    backend.hold("s1", "aborted", "cancelled by the owner")
    await sched.heartbeat_once()
    await settle(sched)
    (line,) = outbox_lines(caplog, "outbox reconciled")
    assert line.levelno == logging.WARNING
    fields = {k: line.__dict__[k] for k in ("slot_id", "sent", "backend_holds", "changed")}
    assert fields == {
        "slot_id": "s1",
        "sent": "in_progress",
        "backend_holds": "aborted",
        "changed": True,
    }
