"""journal.history.state_at: the fold up to a moment equals the live view held then.

A scheduler runs on a fake clock (shared with its journal, so every event's
``recorded_at`` is the clock's time); after each step the test snapshots the live view
at that moment; ``state_at`` of each moment must equal its snapshot. On SQLite and
PostgreSQL. The random version is tests/stateful/test_state_at_machine.py.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest

from calsched.journal import Journal
from calsched.journal.history import state_at
from calsched.model import Slot, SlotState, SlotView, parse
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost
from tests.conftest import FakeClock


def _slot(slot_id: str, agent: str) -> Slot:
    return parse(Slot, {"id": slot_id, "agent_id": agent, "title": f"work {slot_id}"})


@pytest.fixture
async def sched(db_url: str, clock: FakeClock) -> AsyncIterator[Scheduler]:
    """A scheduler whose journal and loops read the fake clock."""
    journal = Journal.open(db_url, "host-a", upgrade=True, clock=clock)
    scheduler = Scheduler(
        SchedulerSettings(identifier="host-a"),
        journal,
        InMemoryBackend(),
        InMemoryHost(),
        clock=clock,
    )
    await scheduler.recover()
    yield scheduler
    await scheduler.stop()
    journal.close()


async def _beat(sched: Scheduler, *slots: Slot) -> None:
    backend = sched.backend
    assert isinstance(backend, InMemoryBackend)
    backend.to_fire = list(slots)
    await sched.heartbeat_once()
    await sched.idle()


async def test_state_at_each_moment_equals_the_live_view_then(
    sched: Scheduler, clock: FakeClock
) -> None:
    """Receive, wake, queue, pause, resume, complete, abort and a second attempt: at
    every moment the fold up to it is the live view the scheduler held."""
    seen: list[tuple[datetime, list[SlotView]]] = [(clock.now, sched.active())]

    async def step(seconds: float, action: object) -> None:
        clock.advance(seconds)
        await action  # type: ignore[misc]
        await sched.idle()
        seen.append((clock.now, sched.active()))

    await step(1, _beat(sched, _slot("s1", "alice"), _slot("s2", "bob")))
    await step(2.5, _beat(sched, _slot("s3", "alice")))  # queued behind s1
    await step(0.001, sched.pause("alice", "lunch"))
    await step(30, sched.complete("bob", "done"))
    await step(7, sched.resume("alice"))
    await step(1, sched.complete("alice", "s1 done"))  # s3 is woken in its place
    await step(4, _beat(sched, _slot("s2", "bob")))  # s2 again: attempt 2
    await step(0.5, sched.abort("alice", "cancelled"))
    await step(0.25, sched.pause("bob"))

    assert {len(views) for _, views in seen} >= {0, 2, 3}, "the scenario lost its shape"
    attempts = {v.slot_id: v.attempt for _, views in seen for v in views}
    assert attempts["s2"] == 2
    for moment, views in seen:
        assert state_at(sched.journal.engine, "host-a", moment) == views, moment
    # Between two moments the state is the earlier one's; before the first event, nothing.
    for (moment, views), _ in itertools.pairwise(seen):
        later = moment + timedelta(microseconds=500)
        assert state_at(sched.journal.engine, "host-a", later) == views
    assert state_at(sched.journal.engine, "host-a", seen[0][0] - timedelta(days=1)) == []


async def test_state_at_filters_by_agent_and_identifier(sched: Scheduler, clock: FakeClock) -> None:
    """``agent_id`` keeps one agent's slots; another identifier's events are not folded."""
    clock.advance(1)
    await _beat(sched, _slot("s1", "alice"), _slot("s2", "bob"))
    engine = sched.journal.engine
    only_bob = state_at(engine, "host-a", clock.now, agent_id="bob")
    assert [(v.slot_id, v.state) for v in only_bob] == [("s2", SlotState.in_progress)]
    assert state_at(engine, "host-b", clock.now) == []
