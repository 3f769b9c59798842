"""Hypothesis state machine over the scheduler: beats, tool calls, faults and crashes.

Invariants after every step:
- no slot attempt is woken twice, except one that was ``dispatching`` when a crash hit;
- no slot lost: every slot a successful beat listed is in the journal;
- the live view equals the replay of the journal, and the projection equals the fold;
- at most one current slot per agent;
- every receipt the backend holds (deduplicated by Idempotency-Key) is a journal status
  event; once the outbox has drained, the two sets are equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import select

from calsched.errors import BackendUnavailableError, InvalidTransitionError, NoActiveSlotError
from calsched.journal import Journal
from calsched.journal.schema import events
from calsched.model import CURRENT_STATES, REPORTED_STATES, Slot, SlotState
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost

AGENTS = ["alice", "bob", "carol"]
SLOTS = [f"s{n}" for n in range(6)]
POLICY_SETTINGS = st.sampled_from(["queue", "replace"])


def _slot(slot_id: str) -> Slot:
    # A slot always belongs to the same agent, as a real calendar's would.
    agent = AGENTS[int(slot_id[1:]) % len(AGENTS)]
    return Slot(id=slot_id, agent_id=agent, title=f"work {slot_id}")


class SchedulerMachine(RuleBasedStateMachine):
    """Random beats, tools, faults and crashes against one journal file."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="calsched-sm-"))
        self.url = f"sqlite:///{self.tmp / 'journal.db'}"
        Journal.open(self.url, "host-a", upgrade=True).close()
        self.runner = asyncio.Runner()
        self.backend = InMemoryBackend()
        self.host = InMemoryHost()
        self.policy = "queue"
        self.listed: set[str] = set()
        self.held: set[str] = set()
        self.failing: set[str] = set()
        self.crashed_dispatching: set[tuple[str, int]] = set()
        self.sched = self._boot()
        self._settle()

    def _boot(self) -> Scheduler:
        settings_ = SchedulerSettings(
            identifier="host-a",
            policy=self.policy,  # type: ignore[arg-type]
            outbox_backoff_initial_s=0.001,
            outbox_backoff_max_s=0.01,
            shutdown_grace_s=0.0,
            wake_timeout_s=5.0,
        )
        journal = Journal.open(self.url, "host-a", synchronous="OFF")
        sched = Scheduler(settings_, journal, self.backend, self.host)
        self.runner.run(sched.recover())
        return sched

    def _settle(self) -> None:
        """Let wakes and deliveries finish, except wakes the host holds on purpose."""

        async def settle() -> None:
            try:
                async with asyncio.timeout(0.05 if self.held else 5):
                    await self.sched.idle()
            except TimeoutError:
                pass

        self.runner.run(settle())

    # -- rules ---------------------------------------------------------------------------

    @rule(ids=st.lists(st.sampled_from(SLOTS), max_size=3))
    def heartbeat(self, ids: list[str]) -> None:
        """The backend lists some slots."""
        self.backend.to_fire = [_slot(i) for i in ids]
        before = len(self.backend.heartbeats)
        self.runner.run(self.sched.heartbeat_once())
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
            self.runner.run(getattr(self.sched, tool)(agent))
        self._settle()

    @rule(agent=st.sampled_from(AGENTS))
    def toggle_hold(self, agent: str) -> None:
        """The host starts or stops holding wakes for an agent (a wake stays in flight)."""
        self.held ^= {agent}
        self._apply_host_faults(agent)
        self._settle()

    @rule(agent=st.sampled_from(AGENTS))
    def toggle_wake_failure(self, agent: str) -> None:
        """The host starts or stops refusing wakes for an agent."""
        self.failing ^= {agent}
        self._apply_host_faults(agent)
        self._settle()

    def _apply_host_faults(self, agent: str) -> None:
        # heal() clears both kinds of fault for the agent; put back the ones still wanted.
        self.host.heal(agent)
        if agent in self.held:
            self.host.hang_wakes(agent)
        if agent in self.failing:
            self.host.fail_wakes(agent, "offline")

    @rule()
    def flaky_backend(self) -> None:
        """The next status post fails with a passing fault."""
        self.backend.fail_status(BackendUnavailableError("HTTP 503", status_code=503))

    @rule()
    def deliver(self) -> None:
        """Time passes: due outbox rows are delivered."""
        self.runner.run(asyncio.sleep(0.002))
        self._settle()

    @rule(policy=POLICY_SETTINGS)
    def crash_and_restart(self, policy: str) -> None:
        """The process dies (nothing graceful) and starts again, maybe with another policy."""
        for view in self.sched.active():
            if view.state is SlotState.dispatching:
                self.crashed_dispatching.add((view.slot_id, view.attempt))
        self.runner.run(self.sched.stop())  # zero grace: in-flight wakes are abandoned
        self.sched.journal.close()
        self.policy = policy
        self.sched = self._boot()
        self._settle()

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
        live = {(v.slot_id, v.state, v.attempt) for v in self.sched.active()}
        stored = {(v.slot_id, v.state, v.attempt) for v in self.sched.journal.load_active()}
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
        """Drain the outbox with no faults: receipts then equal the status events."""
        try:
            # Queued status faults are used up by the retries of this drain.
            self.held.clear()
            self.failing.clear()
            self.host.heal()
            for _ in range(500):
                self._settle()
                if self.sched.journal.outbox_counts().pending == 0:
                    break
                self.runner.run(asyncio.sleep(0.002))
            assert self.sched.journal.outbox_counts().pending == 0
            assert self._receipts() == self._status_event_ids()
        finally:
            self.runner.run(self.sched.stop())
            self.sched.journal.close()
            self.runner.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


SchedulerMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class TestSchedulerMachine(SchedulerMachine.TestCase):  # type: ignore[name-defined,misc]
    """Run the machine as hypothesis's unittest case."""
