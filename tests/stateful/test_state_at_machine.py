"""Hypothesis state machine: ``state_at`` of every past moment is the live view held then.

A scheduler runs on a fake clock shared with its journal. Rules list slots, call the
agents' tools (valid or not), let time pass (sometimes none: several steps then share a
moment, and the moment's state is the one after its last step) and restart the process
(a new journal and scheduler recover from the database). After every step the live view
is recorded under the clock's time; the invariant folds the journal up to each moment
recorded so far and compares. On a SQLite file; with ``CALSCHED_TEST_PG_URL`` also on
PostgreSQL, fewer examples.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from calsched.errors import CalschedError
from calsched.journal import Journal
from calsched.journal.history import state_at
from calsched.model import Slot, SlotView
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost

AGENTS = ["alice", "bob"]
SLOTS = [f"s{n}" for n in range(4)]
TOOLS = ["pause", "resume", "complete", "abort"]
T = TypeVar("T")


@contextlib.contextmanager
def sqlite_file() -> Iterator[str]:
    """A SQLite file URL in a temporary directory, removed after."""
    directory = Path(tempfile.mkdtemp(prefix="calsched-at-"))
    try:
        yield f"sqlite:///{directory / 'journal.db'}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class _Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class StateAtMachine(RuleBasedStateMachine):
    """Beats, tools, time and restarts; the past as folded equals the past as seen."""

    databases: ClassVar[Callable[[], AbstractContextManager[str]]] = staticmethod(sqlite_file)

    def __init__(self) -> None:
        super().__init__()
        self._exit = contextlib.ExitStack()
        self.url = self._exit.enter_context(type(self).databases())
        self.loop = asyncio.new_event_loop()
        self.clock = _Clock()
        self.backend = InMemoryBackend()
        self.host = InMemoryHost()
        #: The live view after the last step at each moment.
        self.seen: dict[datetime, list[SlotView]] = {}
        self.sched = self._start()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def _start(self) -> Scheduler:
        journal = Journal.open(
            self.url, "host-a", upgrade=True, clock=self.clock, synchronous="OFF"
        )
        sched = Scheduler(
            SchedulerSettings(identifier="host-a"),
            journal,
            self.backend,
            self.host,
            clock=self.clock,
        )
        self._run(sched.recover())
        self._run(sched.idle())
        return sched

    def _stop(self) -> None:
        self._run(self.sched.stop())
        self.sched.journal.close()

    # -- rules ---------------------------------------------------------------------------

    @rule(ids=st.lists(st.sampled_from(SLOTS), max_size=3, unique=True))
    def heartbeat(self, ids: list[str]) -> None:
        """The backend lists some slots (a slot keeps its agent)."""
        self.backend.to_fire = [
            Slot(id=i, agent_id=AGENTS[int(i[1:]) % len(AGENTS)], title=i) for i in ids
        ]
        self._run(self.sched.heartbeat_once())
        self.backend.to_fire = []
        self._run(self.sched.idle())

    @rule(agent=st.sampled_from(AGENTS), tool=st.sampled_from(TOOLS))
    def tool_call(self, agent: str, tool: str) -> None:
        """An agent calls a tool; a refused call changes nothing."""
        call = getattr(self.sched, tool)
        with contextlib.suppress(CalschedError):
            self._run(call(agent))
        self._run(self.sched.idle())

    @rule(seconds=st.sampled_from([0.0, 0.000001, 0.5, 7.0, 3600.0]))
    def time_passes(self, seconds: float) -> None:
        """The clock moves on (or not at all)."""
        self.clock.now += timedelta(seconds=seconds)

    @rule()
    def restart(self) -> None:
        """The process stops and a new one recovers from the journal."""
        self._stop()
        self.sched = self._start()

    # -- the property --------------------------------------------------------------------

    @invariant()
    def the_past_folds_to_what_was_seen(self) -> None:
        """Record the live view now; every moment so far folds to what was seen then."""
        self.seen[self.clock.now] = self.sched.active()
        for moment, views in self.seen.items():
            assert state_at(self.sched.journal.engine, "host-a", moment) == views, moment

    def teardown(self) -> None:
        """Stop the scheduler, close the loop and remove the database."""
        try:
            self._stop()
        finally:
            self.loop.close()
            self._exit.close()


StateAtMachine.TestCase.settings = settings(
    # Each step waits on the scheduler's writer thread: about a second per example. The
    # fixed scenario in tests/test_history.py is the fast check; this one explores.
    max_examples=8,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class TestStateAtMachine(StateAtMachine.TestCase):  # type: ignore[name-defined,misc]
    """Run the machine as hypothesis's unittest case."""


class PostgresStateAtMachine(StateAtMachine):
    """The same machine, each example on a fresh PostgreSQL schema."""


PostgresStateAtMachine.TestCase.settings = settings(
    StateAtMachine.TestCase.settings, max_examples=4
)


class TestStateAtMachinePostgres(PostgresStateAtMachine.TestCase):  # type: ignore[name-defined,misc]
    """Run the machine on PostgreSQL (skipped without ``CALSCHED_TEST_PG_URL``)."""

    @pytest.fixture(autouse=True)
    def _schemas(self, pg_schemas: Callable[[], AbstractContextManager[str]]) -> None:
        # A hypothesis case cannot take fixtures per example: the machine draws its
        # schemas from the factory instead, one per example.
        PostgresStateAtMachine.databases = staticmethod(pg_schemas)
