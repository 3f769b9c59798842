"""The I/O-error loop: the k-th SQL statement of an operation fails, for every k.

Three operations (an intake: receive and dispatch from a heartbeat, then the wake; a tool
call: complete; an outbox delivery and its mark) are first run clean to count their
statements, N. Then for every k in 1..N, on a fresh slot, statement k raises the
driver's own "disk I/O error": once (the next statement works again) or persistently
(every statement from k on fails until the test heals the disk). After each run:

- the live view equals a replay of the journal (``verify()`` is clean and the
  scheduler's active slots are exactly ``load_active()``);
- a tool call is either acknowledged and committed, or refused with
  :class:`JournalUnavailableError` and not committed;
- every wake the host got was for a dispatch that committed (journal first);
- the writer said "journal unavailable" at most once for the episode;
- once the disk heals, the same slot reaches its end: woken, completed, delivered once
  per idempotency key.

The fault is raised by a ``before_cursor_execute`` listener, which sees the statements of
SQLAlchemy and of :func:`~calsched.journal.engine.driver_execute` alike, so it works on
SQLite and PostgreSQL (there as psycopg's ``58030 io_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import pytest
from sqlalchemy import Engine, event

from calsched.errors import BackendUnavailableError, JournalUnavailableError
from calsched.journal import Journal
from calsched.model import Slot, SlotState, parse
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost

MODES = ["once", "persistent"]
#: More statements than any one operation runs.
MAX_STATEMENTS = 200


class DiskFault:
    """Makes the k-th statement after :meth:`arm` fail (and, persistently, every later one)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.at: int | None = None
        self.persistent = False
        #: Statements seen since the last arm (or count), and faults raised.
        self.seen = 0
        self.raised = 0
        event.listen(engine, "before_cursor_execute", self._before)

    def count(self) -> None:
        """Count statements without failing any."""
        self.at, self.seen, self.raised = None, 0, 0

    def arm(self, k: int, *, persistent: bool) -> None:
        """Fail statement ``k`` from now on (1-based)."""
        self.at, self.persistent, self.seen, self.raised = k, persistent, 0, 0

    def heal(self) -> None:
        """Let every statement through again."""
        self.at = None

    def _before(self, *_args: Any) -> None:
        self.seen += 1
        if self.at is None or self.seen < self.at:
            return
        if self.seen == self.at or self.persistent:
            self.raised += 1
            raise self._error()

    def _error(self) -> Exception:
        if self.engine.dialect.name == "sqlite":
            return sqlite3.OperationalError("disk I/O error")
        import psycopg.errors

        return psycopg.errors.lookup("58030")("could not write block 7: Input/output error")


class Rig:
    """One scheduler on a fresh journal, its fakes and its fault."""

    def __init__(self, sched: Scheduler, backend: InMemoryBackend, host: InMemoryHost) -> None:
        self.sched = sched
        self.backend = backend
        self.host = host
        self.journal = sched.journal
        self.fault = DiskFault(sched.journal.engine)

    async def beat(self, *slots: Slot) -> None:
        """One heartbeat listing ``slots``, and everything it leads to."""
        self.backend.to_fire = list(slots)
        await self.sched.heartbeat_once()
        await self.sched.idle()

    async def drain(self) -> None:
        """Deliver every outbox row (the hold after a failed mark is short here)."""
        for _ in range(400):
            await self.sched.idle()
            if self.journal.outbox_counts().pending == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the outbox never drained")

    def check_live_equals_replay(self) -> None:
        """The live view is what a restart would rebuild from the journal."""
        assert self.journal.verify() == []
        assert self.sched.active() == self.journal.load_active()

    def check_wakes_committed(self) -> None:
        """Every wake follows a committed dispatch."""
        for wake in self.host.wakes:
            slot_id = wake.source.removeprefix("calendar:slot-")
            view = self.journal.get(slot_id)
            assert view is not None, slot_id
            assert view.state is not SlotState.pending, view


@pytest.fixture
async def rig(db_url: str) -> AsyncIterator[Rig]:
    """A scheduler whose outbox holds and retries within a tenth of a second."""
    journal = Journal.open(db_url, "host-a", upgrade=True)
    settings = SchedulerSettings(
        identifier="host-a", outbox_backoff_initial_s=0.05, outbox_backoff_max_s=0.1
    )
    backend, host = InMemoryBackend(), InMemoryHost()
    sched = Scheduler(settings, journal, backend, host)
    await sched.recover()
    yield Rig(sched, backend, host)
    await sched.stop()
    journal.close()


def slot(n: int) -> Slot:
    """Slot ``s<n>`` for agent ``a<n>``: every run of the loop has its own agent."""
    return parse(Slot, {"id": f"s{n}", "agent_id": f"a{n}", "title": "t"})


def unavailable_lines(caplog: pytest.LogCaptureFixture) -> int:
    """The writer's "journal unavailable" lines so far."""
    return sum(
        1
        for r in caplog.records
        if r.name == "calsched.journal" and r.getMessage().startswith("journal unavailable:")
    )


Operation = Callable[[Rig, int], Awaitable[None]]


async def _loop(
    rig: Rig, mode: str, setup: Operation, operation: Operation, settle: Operation
) -> list[int]:
    """Run ``operation`` with a fault at k = 1, 2, ... until k is past its last statement.

    (The count is not fixed in advance: a first run compiles and caches statements that
    later runs do not repeat.) Returns the k values at which a fault fired. ``setup``
    prepares slot ``n``; ``settle`` brings it to its end once the disk is healed.
    """
    covered: list[int] = []
    for k in range(1, MAX_STATEMENTS):
        await setup(rig, k)
        rig.fault.arm(k, persistent=mode == "persistent")
        await operation(rig, k)
        fired = rig.fault.raised
        rig.fault.heal()
        rig.check_live_equals_replay()
        rig.check_wakes_committed()
        await settle(rig, k)
        rig.check_live_equals_replay()
        if not fired:  # the operation ran clean: every one of its statements was covered
            return covered
        covered.append(k)
    raise AssertionError(f"the operation still ran a statement {MAX_STATEMENTS} in")


async def _nothing(rig: Rig, n: int) -> None:
    del rig, n


async def _intake(rig: Rig, n: int) -> None:
    # A heartbeat whose journal work fails raises, for the run loop to count a failed
    # try and back off; the outbox holds instead.
    with contextlib.suppress(JournalUnavailableError):
        await rig.beat(slot(n))


async def _intake_settles(rig: Rig, n: int) -> None:
    """Listed again after the fault, the slot gets woken and reported.

    Pending (its dispatch failed): the next good beat dispatches it. Dispatching (woken,
    but ``woke`` failed to commit): it stays so until a restart wakes it again, the one
    documented extra wake; ``recover()`` stands for that restart here.
    """
    for _ in range(3):
        view = rig.journal.get(f"s{n}")
        if view is not None and view.state is SlotState.dispatching:
            await rig.sched.recover()
            await rig.sched.idle()
        view = rig.journal.get(f"s{n}")
        if view is not None and view.state is SlotState.in_progress:
            break
        await rig.beat(slot(n))
    view = rig.journal.get(f"s{n}")
    assert view is not None
    assert view.state is SlotState.in_progress, view
    await rig.drain()
    assert len(rig.host.wakes_for(f"a{n}")) >= 1
    assert [u.status for u in rig.backend.updates_for(f"s{n}")] == [SlotState.in_progress]
    rig.backend.to_fire = []


@pytest.mark.parametrize("mode", MODES)
async def test_intake_under_a_failing_statement(
    rig: Rig, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Receive + dispatch + wake with statement k failing: never a wake before its
    commit, live equals replay, and the slot gets there once the disk heals."""
    caplog.set_level(logging.INFO, logger="calsched")
    covered = await _loop(rig, mode, _nothing, _intake, _intake_settles)
    assert len(covered) >= 4
    print(f"intake ({mode}): k = 1..{len(covered)} covered")


async def _in_progress(rig: Rig, n: int) -> None:
    await rig.beat(slot(n))
    await rig.drain()
    view = rig.journal.get(f"s{n}")
    assert view is not None
    assert view.state is SlotState.in_progress
    rig.backend.to_fire = []


class ToolOutcomes:
    """What each tool call under a fault answered (checked once the disk is healed)."""

    acknowledged = 0
    refused = 0
    last: SlotState | None = None
    causes: ClassVar[set[str]] = set()


async def _complete(rig: Rig, n: int) -> None:
    try:
        after = await rig.sched.complete(f"a{n}", "done")
    except JournalUnavailableError as exc:
        ToolOutcomes.causes.add(exc.cause)
        ToolOutcomes.refused += 1
        ToolOutcomes.last = SlotState.in_progress
        return
    assert after.state is SlotState.completed
    ToolOutcomes.acknowledged += 1
    ToolOutcomes.last = SlotState.completed


async def _complete_settles(rig: Rig, n: int) -> None:
    """The journal holds what the call answered; then the agent can still finish:
    completed once, delivered once."""
    view = rig.journal.get(f"s{n}")
    assert view is not None
    assert view.state is ToolOutcomes.last, "refused yet committed, or acknowledged, not"
    if view.state is not SlotState.completed:
        await rig.sched.complete(f"a{n}", "done")
    await rig.drain()
    statuses = [u.status for u in rig.backend.updates_for(f"s{n}")]
    assert statuses == [SlotState.in_progress, SlotState.completed]


@pytest.mark.parametrize("mode", MODES)
async def test_tool_call_under_a_failing_statement(
    rig: Rig, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """complete() with statement k failing: acknowledged and committed, or refused with
    JournalUnavailableError and not committed; the writer says so once per episode."""
    caplog.set_level(logging.INFO, logger="calsched")
    ToolOutcomes.acknowledged = ToolOutcomes.refused = 0
    ToolOutcomes.causes.clear()
    covered = await _loop(rig, mode, _in_progress, _complete, _complete_settles)
    assert ToolOutcomes.refused >= 1
    assert ToolOutcomes.causes == {"disk I/O error"}  # named, on both databases
    # One episode per refused call at most: one line each, never one per statement.
    assert unavailable_lines(caplog) <= len(covered)
    assert unavailable_lines(caplog) >= 1
    recovered = [r for r in caplog.records if "journal available again" in r.getMessage()]
    assert len(recovered) == unavailable_lines(caplog)
    print(
        f"tool call ({mode}): k = 1..{len(covered)}, acknowledged {ToolOutcomes.acknowledged},"
        f" refused {ToolOutcomes.refused}"
    )


async def _pending_delivery(rig: Rig, n: int) -> None:
    """Slot n in progress with its in_progress update not yet delivered."""
    rig.backend.fail_status(BackendUnavailableError("503", status_code=503))
    await rig.beat(slot(n))
    rig.backend.to_fire = []
    rows = rig.journal.outbox_rows(slot_id=f"s{n}")
    assert [r.delivered_at for r in rows] == [None]
    await asyncio.sleep(0.11)  # past the row's retry wait (at most 0.1 s): due now


async def _deliver(rig: Rig, n: int) -> None:
    del n
    with contextlib.suppress(JournalUnavailableError):
        await rig.sched.idle()


async def _delivered(rig: Rig, n: int) -> None:
    """Delivered in the end, every post with the row's one idempotency key."""
    await rig.drain()
    rows = rig.journal.outbox_rows(slot_id=f"s{n}")
    assert rows[0].delivered_at is not None
    keys = {key for sid, _update, key in rig.backend.updates if sid == f"s{n}"}
    assert keys == {rows[0].idempotency_key}
    assert [u.status for u in rig.backend.updates_for(f"s{n}")] == [SlotState.in_progress]


@pytest.mark.parametrize("mode", MODES)
async def test_outbox_mark_under_a_failing_statement(rig: Rig, mode: str) -> None:
    """A delivery whose read or mark fails at statement k: held, posted again with the
    same key, delivered once after dedupe; live equals replay throughout."""
    covered = await _loop(rig, mode, _pending_delivery, _deliver, _delivered)
    assert len(covered) >= 2
    print(f"outbox mark ({mode}): k = 1..{len(covered)}, replays {rig.backend.replays}")
