"""calsched.scheduler.dead_letter_desk: the operator's outbox actions in a running
scheduler, through its journal gateway (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from calsched.errors import BackendRejectedError
from calsched.journal import Journal
from calsched.journal.dead_letters import DISCARD, RETRY, DeadLetters
from calsched.model import Actor, Slot
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost


@pytest.fixture
async def dead(db_url: str) -> AsyncIterator[tuple[Scheduler, InMemoryBackend, int]]:
    """A slot in progress whose one status update the backend refused for good."""
    journal = Journal.open(db_url, "host-a", upgrade=True)
    backend = InMemoryBackend([Slot(id="s-1", agent_id="bob", title="report")])
    backend.fail_status(BackendRejectedError("HTTP 422: unknown slot", status_code=422))
    sched = Scheduler(SchedulerSettings(identifier="host-a"), journal, backend, InMemoryHost())
    try:
        await sched.start()
        await sched.heartbeat_once()
        await sched.idle()
        (row,), _ = DeadLetters(journal.engine, "host-a").undelivered(dead_only=True)
        yield sched, backend, row.id
    finally:
        await sched.stop()
        journal.close()


async def test_status_names_the_dead_slot_and_retry_delivers_it(
    dead: tuple[Scheduler, InMemoryBackend, int],
) -> None:
    """Status lists the slot; a retry is recorded as the operator's and sent at once."""
    sched, backend, row_id = dead
    assert sched.status().outbox.dead_slots == ["s-1"]
    assert backend.updates_for("s-1") == []
    assert await sched.dead_letters.retry(row_id) == [row_id]
    await sched.idle()
    assert [u.status.value for u in backend.updates_for("s-1")] == ["in_progress"]
    assert sched.status().outbox.dead == 0
    assert sched.status().outbox.dead_slots == []
    (action,) = DeadLetters(sched.journal.engine, "host-a").actions()
    assert (action.action, action.actor, action.outbox_id) == (RETRY, Actor.operator, row_id)


async def test_discard_is_journaled_as_the_operator(
    dead: tuple[Scheduler, InMemoryBackend, int],
) -> None:
    """Discarded: never sent, no longer dead, recorded with actor operator and the reason."""
    sched, backend, row_id = dead
    row = await sched.dead_letters.discard(row_id, "slot deleted in the calendar")
    assert row.id == row_id
    await sched.idle()
    assert backend.updates_for("s-1") == []
    assert sched.status().outbox.dead == 0
    (action,) = DeadLetters(sched.journal.engine, "host-a").actions()
    assert (action.action, action.actor, action.reason) == (
        DISCARD,
        Actor.operator,
        "slot deleted in the calendar",
    )
