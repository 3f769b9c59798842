"""The ToolDesk: a tool call checked against the live view, and its kept answer.

Through a real Scheduler (its desk is ``_tools``), on SQLite and PostgreSQL (``db_url``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from calsched.errors import NoActiveSlotError, StaleSlotError
from calsched.journal import Journal
from calsched.journal.idempotency import ToolKey
from calsched.journal.schema import events
from calsched.model import Actor, Slot, SlotState, Trigger
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost


@pytest.fixture
async def sched(db_url: str) -> AsyncIterator[Scheduler]:
    Journal.open(db_url, "host-a", upgrade=True).close()
    journal = Journal.open(db_url, "host-a")
    backend = InMemoryBackend([Slot(id="s1", agent_id="alice", title="report")])
    scheduler = Scheduler(SchedulerSettings(identifier="host-a"), journal, backend, InMemoryHost())
    await scheduler.recover()
    await scheduler.heartbeat_once()
    await scheduler.idle()
    yield scheduler
    await scheduler.stop()
    journal.close()


def event_count(sched: Scheduler) -> int:
    with sched.journal.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


async def test_a_call_naming_another_slot_is_stale_and_writes_nothing(sched: Scheduler) -> None:
    """Generation fencing: the named slot must be the current one."""
    before = event_count(sched)
    with pytest.raises(StaleSlotError):
        await sched._tools.act("alice", Trigger.pause, "s-old", None, Actor.agent)
    with pytest.raises(NoActiveSlotError):
        await sched._tools.act("bob", Trigger.pause, None, None, Actor.agent)
    assert event_count(sched) == before


async def test_a_keyed_call_keeps_its_answer_with_the_change(sched: Scheduler) -> None:
    """The transition and the answer a retry repeats commit in one transaction."""
    key = ToolKey.of("k-1", "pause", "agent", {"reason": "lunch"})
    after = await sched._tools.act("alice", Trigger.pause, None, key, Actor.agent, reason="lunch")
    assert after.state is SlotState.paused
    kept = await sched._tools.recall("alice", "k-1")
    assert kept is not None
    assert kept.status == 200
    assert kept.body["state"] == "paused"
    assert await sched._tools.recall("bob", "k-1") is None  # keys are per agent


async def test_each_call_is_one_line_with_its_actor(
    sched: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    """A committed call is told once at info: tool, actor, slot, the state it left."""
    caplog.set_level(logging.INFO, logger="calsched.scheduler")
    await sched._tools.act("alice", Trigger.pause, None, None, Actor.operator, reason="lunch")
    with pytest.raises(NoActiveSlotError):  # refused: nothing committed, nothing told
        await sched._tools.act("bob", Trigger.pause, None, None, Actor.agent)
    calls = [r for r in caplog.records if r.msg == "tool call"]
    assert len(calls) == 1
    fields = calls[0].__dict__
    assert {k: fields[k] for k in ("tool", "actor", "agent_id", "slot_id", "state")} == {
        "tool": "pause",
        "actor": "operator",
        "agent_id": "alice",
        "slot_id": "s1",
        "state": "paused",
    }


async def test_a_call_on_a_slot_still_dispatching_waits_for_its_wake(db_url: str) -> None:
    """A host that hands a wake on (a queue) lets its agent call a tool before ``woke``
    committed: the call waits for the wake and acts on the in_progress slot."""
    journal = Journal.open(db_url, "host-a", upgrade=True)
    host = InMemoryHost()
    host.hang_wakes("alice")
    backend = InMemoryBackend([Slot(id="s1", agent_id="alice")])
    scheduler = Scheduler(SchedulerSettings(identifier="host-a"), journal, backend, host)
    try:
        await scheduler.recover()
        await scheduler.heartbeat_once()
        while not host.wakes:
            await asyncio.sleep(0.005)
        assert (await scheduler.current_slot("alice")).state is SlotState.dispatching
        call = asyncio.create_task(scheduler.complete("alice", "done", slot_id="s1"))
        await asyncio.sleep(0.05)
        assert not call.done()  # waiting for the wake, not refused
        host.heal()
        after = await asyncio.wait_for(call, 5)
        assert after.state is SlotState.completed
    finally:
        await scheduler.stop()
        journal.close()


async def test_an_abort_of_a_slot_still_dispatching_does_not_wait(db_url: str) -> None:
    """An abort is allowed from dispatching: it does not wait for a hung wake."""
    journal = Journal.open(db_url, "host-a", upgrade=True)
    host = InMemoryHost()
    host.hang_wakes("alice")
    backend = InMemoryBackend([Slot(id="s1", agent_id="alice")])
    scheduler = Scheduler(SchedulerSettings(identifier="host-a"), journal, backend, host)
    try:
        await scheduler.recover()
        await scheduler.heartbeat_once()
        while not host.wakes:
            await asyncio.sleep(0.005)
        after = await asyncio.wait_for(scheduler.abort("alice", "not now"), 5)
        assert after.state is SlotState.aborted
    finally:
        host.heal()
        await scheduler.stop()
        journal.close()
