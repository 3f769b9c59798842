"""Scheduler behaviour against in-memory fakes, one seed defect at a time (DESIGN.md table).

Every test runs on SQLite and on PostgreSQL (``db_url``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select

from calsched.errors import (
    BackendConflictError,
    BackendRefusedError,
    BackendRejectedError,
    BackendUnavailableError,
    InvalidTransitionError,
    JournalError,
    NoActiveSlotError,
    StaleSlotError,
)
from calsched.journal import Journal, TransitionRequest
from calsched.journal.schema import events, outbox
from calsched.model import (
    Actor,
    Slot,
    SlotState,
    Trigger,
    parse,
    utcnow,
)
from calsched.ports import WakeRequest
from calsched.scheduler import Scheduler, dispatcher
from calsched.settings import QueuePolicy, SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost

Factory = Callable[..., Scheduler]


@pytest.fixture
def db(db_url: str) -> str:
    """A migrated journal database: a SQLite file, or a private PostgreSQL schema."""
    Journal.open(db_url, "host-a", upgrade=True).close()
    return db_url


@pytest.fixture
def backend() -> InMemoryBackend:
    """A scripted backend that records status updates."""
    return InMemoryBackend()


@pytest.fixture
def host() -> InMemoryHost:
    """A host that records wakes."""
    return InMemoryHost()


@pytest.fixture
async def make(db: str, backend: InMemoryBackend, host: InMemoryHost) -> AsyncIterator[Factory]:
    """Build schedulers on the shared database; stop and close them all at the end."""
    made: list[Scheduler] = []

    def factory(**overrides: object) -> Scheduler:
        settings = SchedulerSettings(identifier="host-a", **overrides)  # type: ignore[arg-type]
        journal = Journal.open(db, "host-a")
        sched = Scheduler(settings, journal, backend, host)
        made.append(sched)
        return sched

    yield factory
    for sched in made:
        await sched.stop()
        sched.journal.close()


def slot(slot_id: str, agent: str = "alice", **extra: object) -> Slot:
    """A slot as the backend would list it."""
    return parse(Slot, {"id": slot_id, "agent_id": agent, "title": "t", **extra})


async def beat(sched: Scheduler) -> None:
    """One heartbeat and everything it leads to."""
    await sched.heartbeat_once()
    await sched.idle()


def count_events(sched: Scheduler) -> int:
    """Rows in the append-only events table."""
    with sched.journal.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


async def test_slot_is_journaled_woken_and_reported(
    make: Factory, backend: InMemoryBackend, host: InMemoryHost
) -> None:
    """A listed slot is received, dispatched, woken; the backend hears in_progress."""
    sched = make()
    await sched.recover()
    backend.to_fire = [slot("s1", prompt_text="do it")]
    await beat(sched)
    assert [w.message for w in host.wakes] == ["do it"]
    assert host.wakes[0].source == "calendar:slot-s1"
    assert (await sched.current_slot("alice")).state is SlotState.in_progress
    assert [u.status for u in backend.updates_for("s1")] == [SlotState.in_progress]


async def test_wake_happens_only_after_the_dispatch_committed(
    make: Factory, backend: InMemoryBackend, host: InMemoryHost
) -> None:
    """Journal first, effects after: at wake time the journal already says dispatching."""
    sched = make()
    seen: list[SlotState | None] = []

    def check(request: object) -> None:
        view = sched.journal.get("s1")
        seen.append(view.state if view else None)

    original = host.wake_agent

    async def wake(request: WakeRequest) -> None:
        check(request)
        await original(request)

    host.wake_agent = wake  # type: ignore[method-assign]
    await sched.recover()
    backend.to_fire = [slot("s1")]
    await beat(sched)
    assert seen == [SlotState.dispatching]


async def test_restart_restores_active_slots(
    make: Factory, backend: InMemoryBackend, host: InMemoryHost
) -> None:
    """Seed defect: a restart lost active slots. Here they come back, silently."""
    first = make()
    await first.recover()
    backend.to_fire = [slot("s1"), slot("s2", "bob")]
    await beat(first)
    await first.pause("bob", "lunch")
    await first.stop()
    second = make()
    await second.recover()
    states = {v.slot_id: v.state for v in second.active()}
    assert states == {"s1": SlotState.in_progress, "s2": SlotState.paused}
    assert len(host.wakes) == 2  # restored silently, not woken again


async def test_relisted_slot_after_restart_is_not_woken_twice(
    make: Factory, backend: InMemoryBackend, host: InMemoryHost
) -> None:
    """Seed defect: a re-listed slot after restart was woken twice."""
    first = make()
    await first.recover()
    backend.to_fire = [slot("s1")]
    await beat(first)
    await first.stop()
    second = make()
    await second.recover()
    await beat(second)  # the backend still lists s1
    assert len(host.wakes) == 1


async def test_failed_status_update_is_retried_with_the_same_key(
    make: Factory, backend: InMemoryBackend
) -> None:
    """Seed defect: status updates were fire-once. The outbox retries until acknowledged."""
    # A retry wait long enough that idle() cannot reach the second try even under load.
    sched = make(outbox_backoff_initial_s=0.3)
    await sched.recover()
    backend.fail_status(BackendUnavailableError("503", status_code=503))
    backend.fail_status(BackendUnavailableError("timeout"))
    backend.to_fire = [slot("s1")]
    await beat(sched)
    rows = sched.journal.outbox_rows(slot_id="s1")
    assert rows[0].delivered_at is None
    assert rows[0].tries == 1  # one try per pass: the row itself is the retry schedule
    await _until_delivered(sched)
    assert [u.status for u in backend.updates_for("s1")] == [SlotState.in_progress]
    assert [key for _slot, _update, key in backend.updates] == [rows[0].idempotency_key]
    assert sched.journal.outbox_rows(slot_id="s1")[0].tries == 3


async def _until_delivered(sched: Scheduler) -> None:
    """Let retries become due (the retry wait is tiny in these tests) and deliver."""
    import asyncio

    for _ in range(500):
        if sched.journal.outbox_counts().pending == 0:
            return
        await asyncio.sleep(0.02)
        await sched.idle()
    raise AssertionError("outbox never drained")


async def test_resume_from_in_progress_is_rejected_and_writes_nothing(
    make: Factory, backend: InMemoryBackend
) -> None:
    """Seed defect: resume set in_progress from any state."""
    sched = make()
    await sched.recover()
    backend.to_fire = [slot("s1")]
    await beat(sched)
    before = count_events(sched)
    with pytest.raises(InvalidTransitionError) as info:
        await sched.resume("alice")
    assert (info.value.state, info.value.trigger) == ("in_progress", "resume")
    assert count_events(sched) == before


async def test_queue_policy_runs_the_second_slot_after_the_first(
    make: Factory, backend: InMemoryBackend, host: InMemoryHost
) -> None:
    """Seed defect: a second slot overwrote the first. Under queue it waits its turn."""
    sched = make()
    await sched.recover()
    backend.to_fire = [slot("s1")]
    await beat(sched)
    backend.to_fire = [slot("s1"), slot("s2")]
    await beat(sched)
    assert [w.slot_id for w in host.wakes] == ["s1"]
    assert {v.slot_id: v.state for v in sched.active()}["s2"] is SlotState.pending
    done = await sched.complete("alice", "ok")
    assert done.state is SlotState.completed
    assert done.slot_id == "s1"
    await sched.idle()
    assert [w.slot_id for w in host.wakes] == ["s1", "s2"]
    assert (await sched.current_slot("alice")).slot_id == "s2"


async def test_replace_policy_aborts_the_older_slot(
    make: Factory, backend: InMemoryBackend
) -> None:
    """Under replace, the older slot is aborted with reason 'superseded by <id>'."""
    sched = make(policy=QueuePolicy.replace)
    await sched.recover()
    backend.to_fire = [slot("s1")]
    await beat(sched)
    backend.to_fire = [slot("s2")]
    await beat(sched)
    old = sched.journal.get("s1")
    assert old is not None
    assert old.state is SlotState.aborted
    assert old.reason == "superseded by s2"
    assert (await sched.current_slot("alice")).slot_id == "s2"
    assert [u.status for u in backend.updates_for("s1")] == [
        SlotState.in_progress,
        SlotState.aborted,
    ]


async def test_backend_hears_every_state_change(make: Factory, backend: InMemoryBackend) -> None:
    """Seed defect: the backend never heard in_progress. Here it hears every change."""
    sched = make()
    await sched.recover()
    backend.to_fire = [slot("s1")]
    await beat(sched)
    await sched.pause("alice", "wait")
    await sched.resume("alice")
    await sched.complete("alice", "done")
    await sched.idle()
    assert [u.status for u in backend.updates_for("s1")] == [
        SlotState.in_progress,
        SlotState.paused,
        SlotState.in_progress,
        SlotState.completed,
    ]
    assert backend.updates_for("s1")[-1].summary == "done"


async def test_history_is_full_in_sql_but_capped_in_status(
    make: Factory, backend: InMemoryBackend
) -> None:
    """Seed defect: history was the last 32 in memory. SQL keeps all; status is capped."""
    sched = make(history_cap=2)
    await sched.recover()
    for n in range(4):
        backend.to_fire = [slot(f"s{n}")]
        await beat(sched)
        await sched.complete("alice", f"done {n}")
    status = sched.status()
    assert [h.slot_id for h in status.history] == ["s3", "s2"]
    assert len(sched.journal.history(state=SlotState.completed)) == 4


async def test_tools_without_a_slot_raise_no_active_slot(make: Factory) -> None:
    """A tool call for an agent with no current slot is a clear error."""
    sched = make()
    await sched.recover()
    with pytest.raises(NoActiveSlotError):
        await sched.complete("nobody")


async def test_a_named_slot_that_is_not_current_is_stale(
    make: Factory, backend: InMemoryBackend
) -> None:
    """Generation fencing: a late call naming an old slot cannot complete the newer one."""
    sched = make()
    await sched.recover()
    backend.to_fire = [slot("s1")]
    await beat(sched)
    await sched.complete("alice", slot_id="s1")
    backend.to_fire = [slot("s2")]
    await beat(sched)
    with pytest.raises(StaleSlotError):
        await sched.complete("alice", "late", slot_id="s1")
    assert (await sched.current_slot("alice")).state is SlotState.in_progress


async def test_failed_wake_aborts_the_slot_with_the_cause(
    make: Factory, backend: InMemoryBackend, host: InMemoryHost
) -> None:
    """A wake the host refuses aborts the slot with 'wake-agent failed: <cause>'."""
    sched = make()
    await sched.recover()
    host.fail_wakes("alice", "agent is offline")
    backend.to_fire = [slot("s1")]
    await beat(sched)
    view = sched.journal.get("s1")
    assert view is not None
    assert view.state is SlotState.aborted
    assert view.reason == "wake-agent failed: agent is offline"
    assert host.accepted == []
    assert [u.status for u in backend.updates_for("s1")] == [SlotState.aborted]


async def test_misfired_slot_is_aborted_not_woken(
    make: Factory, backend: InMemoryBackend, host: InMemoryHost
) -> None:
    """A slot later than the misfire grace is journaled aborted and reported, not woken."""
    sched = make(misfire_grace_s=60)
    await sched.recover()
    backend.to_fire = [slot("s1", scheduled_at=(utcnow() - timedelta(minutes=5)).isoformat())]
    await beat(sched)
    view = sched.journal.get("s1")
    assert view is not None
    assert view.state is SlotState.aborted
    assert view.reason is not None
    assert view.reason.startswith("missed: late by 5m")
    assert host.wakes == []
    assert [u.status for u in backend.updates_for("s1")] == [SlotState.aborted]


async def test_conflict_reconciles_to_the_backend_status(
    make: Factory, backend: InMemoryBackend
) -> None:
    """409 with another terminal status journals a reconcile and stops retrying."""
    sched = make()
    await sched.recover()
    backend.fail_status(BackendConflictError("409", status="aborted", reason="timed out"))
    backend.to_fire = [slot("s1")]
    await beat(sched)
    view = sched.journal.get("s1")
    assert view is not None
    assert view.state is SlotState.aborted
    kinds = [e.kind for e in sched.journal.events("s1")]
    assert kinds[-1] is Trigger.reconcile
    assert sched.journal.outbox_counts().pending == 0
    assert sched.active() == []


async def test_rejected_update_is_dead_lettered(make: Factory, backend: InMemoryBackend) -> None:
    """404/400/422 dead-letters the row: kept, counted, not retried."""
    sched = make()
    await sched.recover()
    backend.fail_status(BackendRejectedError("404", status_code=404))
    backend.to_fire = [slot("s1")]
    await beat(sched)
    assert sched.journal.outbox_counts().dead == 1
    assert sched.status().outbox.dead == 1


async def test_refused_key_is_flagged_and_retried(make: Factory, backend: InMemoryBackend) -> None:
    """401/403 keeps retrying, and status says the key is refused until a try succeeds."""
    sched = make(outbox_backoff_initial_s=0.3)
    await sched.recover()
    backend.fail_status(BackendRefusedError("401", status_code=401))
    backend.to_fire = [slot("s1")]
    await beat(sched)
    assert sched.status().backend.key_refused is True
    await _until_delivered(sched)
    assert sched.status().backend.key_refused is False


async def test_stale_listing_after_terminal_is_ignored_but_later_one_is_a_new_attempt(
    make: Factory, backend: InMemoryBackend, host: InMemoryHost
) -> None:
    """A beat sent before the terminal ack is stale; one sent after starts attempt 2."""
    sched = make()
    await sched.recover()
    backend.to_fire = [slot("s1")]
    await beat(sched)
    await sched.complete("alice")
    # The completion is not yet acknowledged when this beat lists s1: skipped as stale.
    await beat(sched)
    assert len(host.wakes) == 1
    await _until_delivered(sched)
    await beat(sched)
    assert len(host.wakes) == 2
    assert host.wakes[1].attempt == 2


async def test_dispatching_slot_is_woken_again_after_a_crash(
    make: Factory, db: str, backend: InMemoryBackend, host: InMemoryHost
) -> None:
    """A slot left dispatching by a crash is woken again (at-least-once)."""
    from calsched.journal import TransitionRequest
    from calsched.model import Actor

    journal = Journal.open(db, "host-a")
    journal.apply(TransitionRequest("s1", Trigger.receive, Actor.scheduler, slot=slot("s1")))
    journal.apply(TransitionRequest("s1", Trigger.dispatch, Actor.scheduler))
    journal.close()
    sched = make()
    await sched.recover()
    await sched.idle()
    assert [w.slot_id for w in host.wakes] == ["s1"]
    assert (await sched.current_slot("alice")).state is SlotState.in_progress
    assert sched.journal.events("s1")[-1].actor.value == "recovery"


async def test_failed_heartbeat_is_recorded_and_not_raised(
    make: Factory, backend: InMemoryBackend
) -> None:
    """A failed beat is logged, shown in status, and the next beat works."""
    sched = make()
    await sched.recover()
    backend.fail_heartbeat(BackendUnavailableError("HTTP 503", status_code=503))
    await sched.heartbeat_once()
    assert sched.status().backend.last_error == "HTTP 503"
    await sched.heartbeat_once()
    assert sched.status().backend.last_error is None


async def test_restart_pending_sets_the_event(make: Factory, backend: InMemoryBackend) -> None:
    """A beat answering restart_pending sets restart_requested and shows in status."""
    sched = make()
    await sched.recover()
    backend.restart_pending = True
    await sched.heartbeat_once()
    assert sched.restart_requested.is_set()
    assert sched.status().restart_pending is True


async def test_heartbeat_reports_every_active_slot(make: Factory, backend: InMemoryBackend) -> None:
    """Every beat lists all non-terminal slots in active_slots."""
    sched = make()
    await sched.recover()
    backend.to_fire = [slot("s1"), slot("s2")]
    await beat(sched)
    backend.to_fire = []
    await sched.heartbeat_once()
    reported = {(a.id, a.state) for a in backend.heartbeats[-1].active_slots}
    assert reported == {("s1", SlotState.in_progress), ("s2", SlotState.pending)}


async def test_run_and_stop(make: Factory, backend: InMemoryBackend, host: InMemoryHost) -> None:
    """start() beats at once; stop() is graceful and flushes the outbox."""
    import asyncio

    sched = make(heartbeat_interval_s=0.05, outbox_poll_s=0.01)
    backend.to_fire = [slot("s1")]
    await sched.start()
    for _ in range(200):
        if backend.updates_for("s1"):
            break
        await asyncio.sleep(0.01)
    await sched.stop()
    assert [w.slot_id for w in host.wakes] == ["s1"]
    assert [u.status for u in backend.updates_for("s1")] == [SlotState.in_progress]


async def test_identifier_must_match_the_journal(db: str, backend: InMemoryBackend) -> None:
    """A scheduler and a journal of different identifiers refuse to work together."""
    from calsched.errors import ConfigError

    journal = Journal.open(db, "host-b")
    try:
        with pytest.raises(ConfigError, match="host-b"):
            Scheduler(SchedulerSettings(identifier="host-a"), journal, backend, InMemoryHost())
    finally:
        journal.close()


async def test_concurrent_tool_calls_commit_together_and_fail_alone(
    make: Factory, backend: InMemoryBackend, host: InMemoryHost
) -> None:
    """Forty agents pausing at once share commits; a resume that does not fit fails alone."""
    agents = [f"agent-{i}" for i in range(40)]
    backend.to_fire = [slot(f"s{i}", agent) for i, agent in enumerate(agents)]
    sched = make()
    await sched.start()
    await sched.heartbeat_once()
    await sched.idle()
    before = sched._gateway.writer.groups
    calls = [sched.pause(agent, "lunch") for agent in agents[1:]]
    calls.append(sched.resume(agents[0]))  # in progress, not paused: refused
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[-1], InvalidTransitionError)
    assert all(r.state is SlotState.paused for r in results[:-1])  # type: ignore[union-attr]
    assert sched._gateway.writer.groups - before < len(calls)  # some calls shared a commit
    assert {v.slot_id: v.state for v in sched.active()} == {
        "s0": SlotState.in_progress,
        **{f"s{i}": SlotState.paused for i in range(1, 40)},
    }
    assert sched.journal.verify() == []


async def test_the_retry_schedule_lives_in_the_row_and_grows(
    make: Factory, backend: InMemoryBackend
) -> None:
    """A backend that keeps failing sees waits that double (with jitter) up to the cap,
    and a restarted scheduler goes on from the row's tries instead of starting again."""
    sched = make(outbox_backoff_initial_s=1.0, outbox_backoff_max_s=8.0)
    await sched.recover()
    backend.fail_status(BackendUnavailableError("503", status_code=503), times=100)
    backend.to_fire = [slot("s1")]
    await beat(sched)
    waits: list[float] = []
    for _ in range(6):
        (row,) = sched.journal.outbox_rows(slot_id="s1")
        assert row.delivered_at is None
        assert row.tries == len(waits) + 1
        tried_at = utcnow()
        waits.append((row.next_try_at - tried_at).total_seconds())
        # Make the row due now, as if its wait had passed, and let one more try happen.
        with sched.journal.engine.begin() as conn:
            conn.execute(outbox.update().where(outbox.c.id == row.id).values(next_try_at=tried_at))
        if len(waits) == 3:
            await sched.stop()
            sched = make(outbox_backoff_initial_s=1.0, outbox_backoff_max_s=8.0)
            await sched.recover()  # the restart: the schedule goes on from tries
        await sched.idle()
    # Equal jitter: each wait lies in [base / 2, base], base = min(8, 1 * 2**(tries - 1)).
    for tries, wait in enumerate(waits, start=1):
        base = min(8.0, 2.0 ** (tries - 1))
        assert base / 2 - 0.5 <= wait <= base + 0.5, (tries, wait)
    assert waits[-1] > 2.5  # still growing after the restart, not back to the first wait


def test_retry_after_is_honoured_up_to_the_cap(make: Factory) -> None:
    """Retry-After sets the wait, but never past outbox_backoff_max_s (1e12 included)."""
    sched = make(outbox_backoff_initial_s=0.5, outbox_backoff_max_s=60.0)
    assert sched._outbox.retry_wait(0, 7.0) == 7.0
    assert sched._outbox.retry_wait(3, 1e12) == 60.0
    assert sched._outbox.retry_wait(3, float("inf")) <= 60.0
    assert 0.25 <= sched._outbox.retry_wait(0, float("nan")) <= 0.5  # unusable: the row's own wait


async def test_concurrent_pumps_dispatch_one_slot_per_agent(
    make: Factory, host: InMemoryHost
) -> None:
    """Pumps for one agent at once dispatch one of its slots; another agent's goes too."""
    sched = make()
    await sched.recover()
    host.hang_wakes("alice")
    await sched._gateway.commit(
        [
            TransitionRequest(s.id, Trigger.receive, Actor.scheduler, slot=s)
            for s in (slot("s1", "alice"), slot("s2", "alice"), slot("s3", "bob"))
        ]
    )  # received, not pumped: every slot is pending
    await asyncio.gather(
        *(sched._dispatch.pump(agent) for agent in ["alice", "alice", "bob", "alice"])
    )
    states = {v.slot_id: v.state for v in sched.active()}
    assert states["s1"] is SlotState.dispatching
    assert states["s2"] is SlotState.pending
    assert states["s3"] is not SlotState.pending
    host.heal()
    await sched.idle()
    assert sched.journal.verify() == []


async def test_a_huge_retry_after_waits_the_cap_and_posts_no_more(
    make: Factory, backend: InMemoryBackend
) -> None:
    """Retry-After: 1e12 once crashed the retry into a hot loop; now it waits the cap."""
    sched = make(outbox_backoff_max_s=60.0)
    await sched.recover()
    backend.fail_status(BackendUnavailableError("503", status_code=503, retry_after=1e12))
    backend.to_fire = [slot("s1")]
    await beat(sched)
    for _ in range(5):
        await sched.idle()
    (row,) = sched.journal.outbox_rows(slot_id="s1")
    assert row.tries == 1  # one post, then it waits
    assert row.delivered_at is None
    wait = (row.next_try_at - utcnow()).total_seconds()
    assert 55 <= wait <= 60


async def test_async_with_starts_and_stops(db: str, backend: InMemoryBackend) -> None:
    """``async with`` starts the scheduler and stops it on exit, an exception's too."""
    journal = Journal.open(db, "host-a")
    backend.to_fire = [slot("s1")]
    made: list[Scheduler] = []

    async def work_then_fail() -> None:
        settings = SchedulerSettings(identifier="host-a")
        async with Scheduler(settings, journal, backend, InMemoryHost()) as sched:
            made.append(sched)
            await sched.heartbeat_once()
            await sched.idle()
            assert [v.state for v in sched.active()] == [SlotState.in_progress]
            raise RuntimeError("boom")

    try:
        with pytest.raises(RuntimeError, match="boom"):
            await work_then_fail()
        assert made[0]._runner.stopped.is_set()
        assert made[0]._gateway.writer._closed
        view = journal.get("s1")
        assert view is not None
        assert view.state is SlotState.in_progress
    finally:
        journal.close()


async def test_lost_lease_refuses_the_tools_and_stop_sends_nothing(
    make: Factory, backend: InMemoryBackend, host: InMemoryHost
) -> None:
    """Fenced by a lease another process then took over: a tool call is refused
    (LeaseLostError, nothing written), and stop(flush=False) sends the backend nothing."""
    from calsched.errors import LeaseLostError
    from calsched.journal.lease import Lease

    sched = make()
    lease = Lease(sched.journal.engine, "host-a", ttl_s=60, lock=None)
    lease.acquire()
    sched.journal.fence(lease.fence)
    await sched.recover()
    backend.to_fire = [slot("s1")]
    await sched.heartbeat_once()
    await sched._dispatch.pump("alice")
    while host.wakes == [] or sched._dispatch.wakes:
        await asyncio.sleep(0.01)
    assert lease.fence is not None
    lease.fence.lose("epoch 2 took over")  # what the fence does on a newer epoch
    before = count_events(sched)
    with pytest.raises(LeaseLostError):
        await sched.complete("alice", "done")
    await sched.stop(flush=False)
    assert count_events(sched) == before
    assert backend.updates_for("s1") == []  # the in_progress row stays for the new holder


async def test_wake_outcomes_ending_together_share_a_write_and_fail_alone(
    make: Factory, backend: InMemoryBackend, host: InMemoryHost
) -> None:
    """Ten wakes released at once settle in one batch; the one whose slot was aborted
    meanwhile is refused alone, and the other nine commit."""
    agents = [f"agent-{i}" for i in range(10)]
    for agent in agents:
        host.hang_wakes(agent)
    backend.to_fire = [slot(f"s{i}", agent) for i, agent in enumerate(agents)]
    sched = make(max_concurrent_wakes=10)
    await sched.recover()
    await sched.heartbeat_once()
    await asyncio.sleep(0.05)  # every wake started and hangs
    await sched.abort("agent-0", "changed my mind")
    settler = sched._gateway.settler
    before = (settler.batches, settler.items)
    host.heal()
    await sched.idle()
    assert (settler.batches - before[0], settler.items - before[1]) == (1, 10)
    states = {v.slot_id: v.state for v in sched.active()}
    assert states == {f"s{i}": SlotState.in_progress for i in range(1, 10)}
    assert sched.journal.verify() == []


async def test_a_failed_batch_write_gives_each_caller_its_own_outcome(
    make: Factory, backend: InMemoryBackend, host: InMemoryHost
) -> None:
    """A database error on a batch of wake outcomes (or of outbox marks) rolls it back;
    each is then written alone, and none is lost."""
    failed: list[str] = []

    def fail_batches(*args: Any) -> None:
        statement, many = args[2], args[5]
        kind = " ".join(statement.split()[:3]).upper()
        if many and kind in ("INSERT INTO EVENTS", "UPDATE OUTBOX SET") and kind not in failed:
            failed.append(kind)
            raise OSError("the disk hiccuped")

    agents = [f"agent-{i}" for i in range(6)]
    for agent in agents:
        host.hang_wakes(agent)
    backend.to_fire = [slot(f"s{i}", agent) for i, agent in enumerate(agents)]
    sched = make()
    await sched.recover()
    await sched.heartbeat_once()
    await asyncio.sleep(0.05)  # every wake started and hangs
    event.listen(sched.journal.engine, "before_cursor_execute", fail_batches)
    try:
        host.heal()
        await sched.idle()
    finally:
        event.remove(sched.journal.engine, "before_cursor_execute", fail_batches)
    assert sorted(failed) == ["INSERT INTO EVENTS", "UPDATE OUTBOX SET"]
    assert {v.slot_id: v.state for v in sched.active()} == {
        f"s{i}": SlotState.in_progress for i in range(6)
    }
    rows = sched.journal.outbox_rows()
    assert len(rows) == 6
    assert all(r.delivered_at is not None for r in rows)
    assert sched.journal.verify() == []


async def test_a_burst_of_new_agents_is_received_and_dispatched_in_one_commit(
    make: Factory, backend: InMemoryBackend, host: InMemoryHost
) -> None:
    """New slots of idle agents are dispatched in their receive's commit: the oldest of
    each (by id), never a second one, and not an agent's that already has a live slot."""
    for agent in ("alice", "bob", "carol"):
        host.hang_wakes(agent)
    backend.to_fire = [slot("c1", "carol")]
    sched = make()
    await sched.recover()
    await sched.heartbeat_once()  # carol now has a live (dispatching) slot
    backend.to_fire = [
        slot("a2", "alice"),
        slot("a1", "alice"),
        slot("b1", "bob"),
        slot("c2", "carol"),
    ]
    before = sched._gateway.writer.groups
    await sched.heartbeat_once()
    assert sched._gateway.writer.groups - before == 1
    states = {v.slot_id: v.state for v in sched.active()}
    assert states == {
        "a1": SlotState.dispatching,
        "a2": SlotState.pending,
        "b1": SlotState.dispatching,
        "c1": SlotState.dispatching,
        "c2": SlotState.pending,
    }
    host.heal()
    await sched.idle()
    assert sched.journal.verify() == []


async def test_a_large_intake_is_committed_in_chunks_in_order(
    make: Factory, backend: InMemoryBackend, host: InMemoryHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past INTAKE_CHUNK requests an intake takes several commits, each dispatching its
    own new agents; an agent's later slot in a later chunk waits its turn."""
    monkeypatch.setattr(dispatcher, "INTAKE_CHUNK", 2)
    agents = ["a", "b", "c", "d", "e"]
    for agent in agents:
        host.hang_wakes(agent)
    backend.to_fire = [slot(f"{a}1", a) for a in agents] + [slot("a2", "a")]
    sched = make()
    await sched.recover()
    before = sched._gateway.writer.groups
    await sched.heartbeat_once()
    assert sched._gateway.writer.groups - before == 3  # 6 requests, 2 a commit
    states = {v.slot_id: v.state for v in sched.active()}
    assert states == {
        **{f"{a}1": SlotState.dispatching for a in agents},
        "a2": SlotState.pending,
    }
    host.heal()
    await sched.idle()
    assert sched.journal.verify() == []


async def test_keyed_tool_call_keeps_its_answer_with_the_change(make: Factory) -> None:
    """A keyed complete commits its event and its answer together; recall gives the body."""
    from calsched.journal.idempotency import ToolKey

    sched = make()
    await sched.recover()
    sched.backend.to_fire = [slot("s1")]  # type: ignore[attr-defined]
    await beat(sched)
    before = count_events(sched)
    key = ToolKey.of("k-1", "complete", "operator", {"summary": "ok"})
    done = await sched.complete("alice", "ok", key=key, actor=Actor.operator)
    assert count_events(sched) == before + 1
    kept = await sched.recall("alice", "k-1")
    assert kept is not None
    assert kept.fingerprint == key.fingerprint
    assert kept.body["state"] == "completed"
    assert kept.body["slot"]["id"] == done.slot_id
    with sched.journal.engine.connect() as conn:
        actor = conn.execute(select(events.c.actor).order_by(events.c.seq.desc())).scalar()
    assert actor == "operator"


async def test_a_key_that_cannot_be_kept_rolls_the_change_back(make: Factory) -> None:
    """If the answer's row fails (a live duplicate), the transition does not commit."""
    from calsched.journal.engine import writing
    from calsched.journal.idempotency import IdempotencyStore, ToolKey

    sched = make()
    await sched.recover()
    sched.backend.to_fire = [slot("s1")]  # type: ignore[attr-defined]
    await beat(sched)
    key = ToolKey.of("dup", "pause", "agent", {})
    with writing(sched.journal.engine, "journal") as conn:
        IdempotencyStore(sched.journal.engine, "host-a").remember_in(conn, "alice", key, 200, {})
    before = count_events(sched)
    with pytest.raises(JournalError):
        await sched.pause("alice", key=key)
    assert count_events(sched) == before
    assert (await sched.current_slot("alice")).state is SlotState.in_progress


async def test_recovery_tells_what_it_found_and_did(
    make: Factory, backend: InMemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """At start, one info line: how many live slots, and what became of each kind."""
    first = make()
    await first.recover()
    backend.to_fire = [slot("s1"), slot("s2")]  # alice: one in progress, one queued
    await beat(first)
    await first.pause("alice", "lunch")
    await first.stop()
    caplog.set_level(logging.INFO, logger="calsched.scheduler")
    caplog.clear()  # the first start's line, if an earlier test left info logging on
    second = make()
    await second.recover()
    lines = [r for r in caplog.records if r.msg == "recovered live slots"]
    assert len(lines) == 1
    fields = lines[0].__dict__
    counts = ("live", "redispatched", "pending", "in_progress", "paused", "outbox_pending")
    assert {k: fields[k] for k in counts} == {
        "live": 2,
        "redispatched": 0,
        "pending": 1,
        "in_progress": 0,
        "paused": 1,
        "outbox_pending": 0,
    }
