"""Hypothesis state machine over the scheduler: beats, tool calls, faults and crashes.

A crash is a real one: the scheduler process dies without ``stop()`` (its event loop is
never run again, mid-beat if the crash cuts one short), and a new process opens the
journal from the database URL (a new engine) and recovers from what was committed. The
machine runs on a SQLite file and, with ``CALSCHED_TEST_PG_URL``, on PostgreSQL.

Invariants after every step:
- no slot attempt is woken twice, except one that was ``dispatching`` when a crash hit;
- no slot lost: every slot a successful beat listed is in the journal;
- the live view equals the replay of the journal, and the projection equals the fold;
- at most one current slot per agent;
- every receipt the backend holds (deduplicated by Idempotency-Key) is a journal status
  event; once the outbox has drained, the two sets are equal;
- at the end, with every fault healed, no slot is left ``dispatching`` (a wake a crash
  cut off was made again).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import select

from calsched.errors import BackendUnavailableError, InvalidTransitionError, NoActiveSlotError
from calsched.journal import Journal
from calsched.journal.schema import events
from calsched.model import CURRENT_STATES, REPORTED_STATES, Slot, SlotState
from calsched.ports import WakeRequest
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost

AGENTS = ["alice", "bob", "carol"]
SLOTS = [f"s{n}" for n in range(6)]
POLICY_SETTINGS = st.sampled_from(["queue", "replace"])
T = TypeVar("T")


def _slot(slot_id: str) -> Slot:
    # A slot always belongs to the same agent, as a real calendar's would.
    agent = AGENTS[int(slot_id[1:]) % len(AGENTS)]
    return Slot(id=slot_id, agent_id=agent, title=f"work {slot_id}")


@contextlib.contextmanager
def sqlite_file() -> Iterator[str]:
    """A SQLite file URL in a temporary directory, removed after."""
    directory = Path(tempfile.mkdtemp(prefix="calsched-sm-"))
    try:
        yield f"sqlite:///{directory / 'journal.db'}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class Process:
    """One incarnation of the scheduler process: its own event loop, its own journal
    (a new engine on the database URL) and its own connection to the host."""

    def __init__(self, url: str, policy: str, backend: InMemoryBackend, host: InMemoryHost):
        self.loop = asyncio.new_event_loop()
        self.host = host
        self.journal = Journal.open(url, "host-a", synchronous="OFF")
        #: The tasks left pending when the process died (see :meth:`die`).
        self.remains: set[asyncio.Task[Any]] = set()
        settings_ = SchedulerSettings(
            identifier="host-a",
            policy=policy,  # type: ignore[arg-type]
            outbox_backoff_initial_s=0.001,
            outbox_backoff_max_s=0.01,
            shutdown_grace_s=0.0,
            wake_timeout_s=5.0,
        )
        self.sched = Scheduler(settings_, self.journal, backend, host)
        self.run(self.sched.recover())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run the loop until ``coro`` is done."""
        return self.loop.run_until_complete(coro)

    def die(self) -> None:
        """The process dies: none of its code runs again, nothing graceful happens.

        Its loop is closed without being run, so its tasks (wakes, deliveries, a beat cut
        short) never take another step: no ``stop()``, no cancellation handlers. The
        writer thread is the one part that runs beside the loop; the writes already handed
        to it commit (the crash comes just after them, as it may), then it ends, so no
        write of this process lands once the next one has opened the journal.
        """
        gateway = self.sched._gateway
        # Held, so that none is collected: a collected coroutine runs its finally blocks.
        self.remains = asyncio.all_tasks(self.loop)
        gateway.writer.close(wait=True)
        # A read in flight finishes (its answer reaches nobody) and gives its connection
        # back, so that dispose() closes every connection of the process.
        gateway._reader.shutdown(wait=True)
        self.journal.engine.dispose()  # its connections go, as a dead process's do
        # Its tasks are destroyed still pending, which asyncio would log as an error.
        self.loop.set_exception_handler(lambda _loop, _context: None)
        self.loop.close()

    def bury(self) -> None:
        """Dispose of what the dead process left, once the example's checks are done.

        Each coroutine is closed: a never-started one is only marked closed (else its
        collection warns it was never awaited); a started one has its finally blocks run
        by ``GeneratorExit``, with the writer closed, so nothing reaches the journal.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for task in self.remains:
                # An await in a finally block raises here; the process is dead anyway.
                with contextlib.suppress(Exception):
                    task.get_coro().close()  # type: ignore[union-attr]
        self.remains = set()

    def stop(self) -> None:
        """The graceful end, for the machine's teardown only."""
        try:
            self.run(self.sched.stop())
        finally:
            self.journal.close()
            self.loop.close()


class SchedulerMachine(RuleBasedStateMachine):
    """Random beats, tools, faults and crashes against one database."""

    #: Where each example's empty database comes from.
    databases: ClassVar[Callable[[], AbstractContextManager[str]]] = staticmethod(sqlite_file)

    def __init__(self) -> None:
        super().__init__()
        self._exit = contextlib.ExitStack()
        self.url = self._exit.enter_context(type(self).databases())
        Journal.open(self.url, "host-a", upgrade=True).close()
        self.backend = InMemoryBackend()
        self.policy = "queue"
        self.listed: set[str] = set()
        self.held: set[str] = set()
        self.failing: set[str] = set()
        self.crashed_dispatching: set[tuple[str, int]] = set()
        #: Wakes accepted by the hosts of every process so far.
        self.accepted: list[WakeRequest] = []
        #: The processes that died, kept until the end (see :meth:`Process.die`).
        self.dead: list[Process] = []
        self.proc = self._boot()
        self._settle()

    @property
    def sched(self) -> Scheduler:
        """The scheduler of the process alive now."""
        return self.proc.sched

    @property
    def host(self) -> InMemoryHost:
        """The host as the process alive now sees it."""
        return self.proc.host

    def _boot(self) -> Process:
        # A new process has a new connection to the host: the hung wakes of a dead one
        # are its dropped connections. The faults still wanted carry over.
        host = InMemoryHost()
        host.accepted = self.accepted
        for agent in AGENTS:
            self._apply_host_faults(agent, host)
        return Process(self.url, self.policy, self.backend, host)

    def _settle(self) -> None:
        """Let wakes and deliveries finish, except wakes the host holds on purpose."""

        async def settle() -> None:
            try:
                async with asyncio.timeout(0.05 if self.held else 5):
                    await self.sched.idle()
            except TimeoutError:
                pass

        self.proc.run(settle())

    # -- rules ---------------------------------------------------------------------------

    @rule(ids=st.lists(st.sampled_from(SLOTS), max_size=3))
    def heartbeat(self, ids: list[str]) -> None:
        """The backend lists some slots."""
        self.backend.to_fire = [_slot(i) for i in ids]
        before = len(self.backend.heartbeats)
        self.proc.run(self.sched.heartbeat_once())
        if len(self.backend.heartbeats) > before:
            self.listed.update(ids)
        self._settle()

    @rule(
        agent=st.sampled_from(AGENTS),
        tool=st.sampled_from(["complete", "abort", "pause", "resume"]),
    )
    def tool_call(self, agent: str, tool: str) -> None:
        """An agent calls one of its tools; invalid calls are clear errors."""
        with contextlib.suppress(NoActiveSlotError, InvalidTransitionError):
            self.proc.run(getattr(self.sched, tool)(agent))
        self._settle()

    @rule(agent=st.sampled_from(AGENTS))
    def toggle_hold(self, agent: str) -> None:
        """The host starts or stops holding wakes for an agent (a wake stays in flight)."""
        self.held ^= {agent}
        self._apply_host_faults(agent, self.host)
        self._settle()

    @rule(agent=st.sampled_from(AGENTS))
    def toggle_wake_failure(self, agent: str) -> None:
        """The host starts or stops refusing wakes for an agent."""
        self.failing ^= {agent}
        self._apply_host_faults(agent, self.host)
        self._settle()

    def _apply_host_faults(self, agent: str, host: InMemoryHost) -> None:
        # heal() clears both kinds of fault for the agent; put back the ones still wanted.
        host.heal(agent)
        if agent in self.held:
            host.hang_wakes(agent)
        if agent in self.failing:
            host.fail_wakes(agent, "offline")

    @rule()
    def flaky_backend(self) -> None:
        """The next status post fails with a passing fault."""
        self.backend.fail_status(BackendUnavailableError("HTTP 503", status_code=503))

    @rule()
    def deliver(self) -> None:
        """Time passes: due outbox rows are delivered."""
        self.proc.run(asyncio.sleep(0.002))
        self._settle()

    @rule(
        policy=POLICY_SETTINGS,
        ids=st.lists(st.sampled_from(SLOTS), max_size=3),
        ticks=st.integers(min_value=0, max_value=12),
    )
    def crash_and_restart(self, policy: str, ids: list[str], ticks: int) -> None:
        """The process dies, maybe in the middle of a beat, and starts again (maybe with
        another policy) from what the database holds.

        The beat runs ``ticks`` short turns of the loop before the crash: none cuts it off
        before it starts, a few cut it mid-intake or mid-wake, more let it finish.
        """
        if ticks:
            self.backend.to_fire = [_slot(i) for i in ids]
            before = len(self.backend.heartbeats)
            beat = self.proc.loop.create_task(self.sched.heartbeat_once())
            for _ in range(ticks):
                self.proc.run(asyncio.sleep(0.0002))
            finished = beat.done() and not beat.cancelled() and beat.exception() is None
            if finished and len(self.backend.heartbeats) > before:
                self.listed.update(ids)
        self.proc.die()
        self.dead.append(self.proc)
        # What the database holds once the dead process's last writes landed: a slot
        # still dispatching there may have been woken already, and is woken again.
        with contextlib.closing(Journal.open(self.url, "host-a")) as journal:
            for view in journal.load_active():
                if view.state is SlotState.dispatching:
                    self.crashed_dispatching.add((view.slot_id, view.attempt))
        self.policy = policy
        self.proc = self._boot()
        self._settle()

    def _catch_up(self) -> None:
        """Wait for the writes queued so far to commit, then let the loop apply them."""
        self.sched._gateway.writer.submit(lambda _conn: None).result(timeout=30)
        for _ in range(3):  # the posted result, then the future's done-callbacks
            self.proc.run(asyncio.sleep(0))

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def no_double_wake(self) -> None:
        """A slot attempt is woken once, unless a crash hit it while dispatching."""
        counts = Counter((w.slot_id, w.attempt) for w in self.host.accepted)
        for key, n in counts.items():
            assert n == 1 or key in self.crashed_dispatching, (key, n)

    @invariant()
    def nothing_lost(self) -> None:
        """Every listed slot is in the journal."""
        known = self.sched.journal.get_many(sorted(self.listed))
        assert set(known) == self.listed

    @invariant()
    def live_equals_replay(self) -> None:
        """The live view equals the journal's active slots, and the projection the fold."""
        for _ in range(20):
            stored = {(v.slot_id, v.state, v.attempt) for v in self.sched.journal.load_active()}
            live = {(v.slot_id, v.state, v.attempt) for v in self.sched.active()}
            if live == stored:
                break
            # A write the writer thread committed after the loop stopped (a wake held past
            # the settle) is in the journal but not yet applied to the live view: that
            # happens on the loop. Let the writer finish, then the loop apply it, and look
            # again; a real divergence stays.
            self._catch_up()
        assert live == stored
        assert self.sched.journal.verify() == []

    @invariant()
    def one_current_slot_per_agent(self) -> None:
        """At most one dispatching/in-progress/paused slot per agent."""
        current = Counter(v.agent_id for v in self.sched.active() if v.state in CURRENT_STATES)
        assert all(n <= 1 for n in current.values()), current

    @invariant()
    def receipts_are_status_events(self) -> None:
        """The backend never holds a status the journal did not record."""
        assert self._receipts() <= self._status_event_ids()

    def _receipts(self) -> set[str]:
        return {key for _slot, _update, key in self.backend.updates}

    def _status_event_ids(self) -> set[str]:
        with self.sched.journal.engine.connect() as conn:
            rows = conn.execute(select(events.c.event_id, events.c.kind, events.c.state_to)).all()
        return {
            r.event_id
            for r in rows
            if SlotState(r.state_to) in REPORTED_STATES and r.kind != "reconcile"
        }

    def teardown(self) -> None:
        """Heal every fault and drain: receipts then equal the status events, and no slot
        is left ``dispatching``."""
        try:
            # Queued status faults are used up by the retries of this drain.
            self.held.clear()
            self.failing.clear()
            self.host.heal()
            for _ in range(500):
                self._settle()
                if self.sched.journal.outbox_counts().pending == 0:
                    break
                self.proc.run(asyncio.sleep(0.002))
            assert self.sched.journal.outbox_counts().pending == 0
            assert self._receipts() == self._status_event_ids()
            # With the host healed, every wake ended: one a crash cut off was made again.
            stuck = [
                v.slot_id
                for v in self.sched.journal.load_active()
                if v.state is SlotState.dispatching
            ]
            assert stuck == [], stuck
        finally:
            try:
                self.proc.stop()
            finally:
                for proc in self.dead:
                    proc.bury()
                self._exit.close()


SchedulerMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class TestSchedulerMachine(SchedulerMachine.TestCase):  # type: ignore[name-defined,misc]
    """Run the machine as hypothesis's unittest case."""


class PostgresSchedulerMachine(SchedulerMachine):
    """The same machine, each example on a fresh PostgreSQL schema."""


PostgresSchedulerMachine.TestCase.settings = settings(
    SchedulerMachine.TestCase.settings, max_examples=12
)


class TestSchedulerMachinePostgres(PostgresSchedulerMachine.TestCase):  # type: ignore[name-defined,misc]
    """Run the machine on PostgreSQL (skipped without ``CALSCHED_TEST_PG_URL``)."""

    @pytest.fixture(autouse=True)
    def _schemas(self, pg_schemas: Callable[[], AbstractContextManager[str]]) -> None:
        # A hypothesis case cannot take fixtures per example: the machine draws its
        # schemas from the factory instead, one per example.
        PostgresSchedulerMachine.databases = staticmethod(pg_schemas)
