"""The scheduler over real HTTP: HttpBackend against the reference backend on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from calsched.backend.calendar import LocalCalendar
from calsched.backend.http import HttpBackend
from calsched.journal import Journal
from calsched.model import SlotState, SlotUpdate, Trigger, utcnow
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import FaultPlan, InMemoryHost

Boot = Callable[..., Scheduler]


@pytest.fixture
def host() -> InMemoryHost:
    """A host that records wakes."""
    return InMemoryHost(["alice", "bob"])


@pytest.fixture
async def boot(
    tmp_path: Path, make_client: Callable[..., HttpBackend], host: InMemoryHost
) -> AsyncIterator[Boot]:
    """Build schedulers on one journal file, talking HTTP to the reference backend."""
    url = f"sqlite:///{tmp_path / 'host.db'}"
    Journal.open(url, "host-a", upgrade=True).close()
    made: list[Scheduler] = []

    def _boot(**overrides: object) -> Scheduler:
        overrides.setdefault("outbox_backoff_initial_s", 0.01)
        overrides.setdefault("backend_deadline_s", 2.0)
        settings = SchedulerSettings(identifier="host-a", **overrides)  # type: ignore[arg-type]
        backend = make_client()
        sched = Scheduler(settings, Journal.open(url, "host-a"), backend, host)
        made.append(sched)
        return sched

    yield _boot
    for sched in made:
        await sched.stop()
        sched.journal.close()


async def drain(sched: Scheduler, *, rounds: int = 200) -> None:
    """Deliver the outbox to the end, letting retries come due."""
    for _ in range(rounds):
        await sched.idle()
        if sched.journal.outbox_counts().pending == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("outbox did not drain")


def statuses(calendar: LocalCalendar, slot_id: str) -> list[str]:
    """The statuses the backend received for a slot, in order (one per idempotency key)."""
    return [r.status for r in calendar.receipts(slot_id)]


async def test_slot_lifecycle_reaches_the_backend(
    boot: Boot, calendar: LocalCalendar, host: InMemoryHost
) -> None:
    """A calendar slot fires, is woken, paused, resumed, completed; the backend hears all."""
    calendar.add("s-1", "alice", title="Daily report", prompt_text="Write the report")
    sched = boot()
    await sched.recover()
    await sched.heartbeat_once()
    await drain(sched)
    assert [w.message for w in host.accepted] == ["Write the report"]
    await sched.pause("alice", "waiting on data")
    await sched.resume("alice")
    await sched.complete("alice", "sent", slot_id="s-1")
    await drain(sched)
    assert statuses(calendar, "s-1") == ["in_progress", "paused", "in_progress", "completed"]
    assert calendar.get("s-1").status == "completed"
    await sched.heartbeat_once()  # the completed slot is not listed again
    assert len(host.accepted) == 1


async def test_passing_faults_are_retried_and_deduplicated(
    boot: Boot, calendar: LocalCalendar, faults: FaultPlan
) -> None:
    """503 with Retry-After, 429, and execute-then-timeout: one receipt per change."""
    calendar.add("s-1", "alice")
    sched = boot(backend_deadline_s=0.5)
    await sched.recover()
    await sched.heartbeat_once()
    faults.server_error(503, retry_after=0, route="status").too_many(0, route="status")
    faults.execute_then_timeout(hang_seconds=5, route="status")
    await drain(sched)
    assert statuses(calendar, "s-1") == ["in_progress"]
    row = sched.journal.outbox_rows(slot_id="s-1")[0]
    assert row.tries == 4
    assert row.delivered_at is not None


async def test_a_dripping_beat_is_cut_at_the_schedulers_deadline(
    boot: Boot, calendar: LocalCalendar, faults: FaultPlan, host: InMemoryHost
) -> None:
    """A beat whose answer drips for 10 s, every chunk prompt, fails at backend_deadline_s.

    The scheduler's cut is the only one (the client has none): the failed beat reads
    "no answer within 0.3s", and the next beat, without the fault, fires the slot.
    """
    calendar.add("s-1", "alice")
    sched = boot(backend_deadline_s=0.3)
    await sched.recover()
    faults.slow_drip(10, chunks=100, route="heartbeat")
    assert await sched.heartbeat_once() is False
    assert sched.status().backend.last_error == "no answer within 0.3s"
    assert host.accepted == []
    assert await sched.heartbeat_once() is True
    await sched.idle()
    assert [w.slot_id for w in host.accepted] == ["s-1"]


async def test_a_hanging_status_post_is_retried_with_the_schedulers_message(
    boot: Boot, calendar: LocalCalendar, faults: FaultPlan
) -> None:
    """A status post with no answer is cut at backend_deadline_s and retried, its try
    recorded as "no answer within 0.3s"."""
    calendar.add("s-1", "alice")
    sched = boot(backend_deadline_s=0.3, outbox_backoff_initial_s=30.0)
    await sched.recover()
    faults.hang(30, route="status")
    await sched.heartbeat_once()
    for _ in range(200):
        await sched.idle()
        row = sched.journal.outbox_rows(slot_id="s-1")[0]
        if row.tries:
            break
        await asyncio.sleep(0.02)
    assert (row.tries, row.last_error, row.delivered_at) == (1, "no answer within 0.3s", None)


async def test_refused_key_shows_in_status_and_heartbeats_fail(
    boot: Boot, calendar: LocalCalendar, faults: FaultPlan
) -> None:
    """A refused key fails the beat, and status says so without showing the key."""
    sched = boot()
    await sched.recover()
    faults.refused(route="heartbeat")
    await sched.heartbeat_once()
    status = sched.status()
    assert status.backend.key_refused is True
    assert "integration-key" not in repr(status)
    await sched.heartbeat_once()
    assert sched.status().backend.key_refused is False


async def test_backend_conflict_reconciles(boot: Boot, calendar: LocalCalendar) -> None:
    """The backend already holds 'aborted': calsched journals a reconcile to it."""
    calendar.add("s-1", "alice")
    sched = boot()
    await sched.recover()
    await sched.heartbeat_once()
    await drain(sched)
    # Meanwhile the backend's operator aborts the slot.
    calendar.record_status(
        "s-1",
        SlotUpdate(
            identifier="ops",
            status=SlotState.aborted,
            attempt=1,
            reason="cancelled by operator",
            occurred_at=utcnow(),
        ),
        "operator-key-1",
    )
    await sched.complete("alice", "done")
    await drain(sched)
    view = sched.journal.get("s-1")
    assert view is not None
    assert view.state is SlotState.aborted
    assert sched.journal.events("s-1")[-1].kind is Trigger.reconcile


async def test_restart_keeps_the_slot_and_reports_it_active(
    boot: Boot, calendar: LocalCalendar, host: InMemoryHost, make_client: Callable[..., HttpBackend]
) -> None:
    """After a restart the slot is still active, not woken again, and still reported."""
    calendar.add("s-1", "alice")
    first = boot()
    await first.recover()
    await first.heartbeat_once()
    await drain(first)
    await first.stop()
    second = boot()
    await second.recover()
    await second.heartbeat_once()
    await drain(second)
    assert len(host.accepted) == 1
    assert [v.slot_id for v in second.active()] == ["s-1"]
    await second.complete("alice", "after restart")
    await drain(second)
    assert statuses(calendar, "s-1") == ["in_progress", "completed"]
