"""A hypothesis state machine that fires random triggers at the journal and checks it.

Random slots (a small pool, so they collide) for random agents get random triggers, valid
and invalid, one at a time or in batches, with and without attempt fencing; the database
is closed and reopened mid-run. A plain Python model predicts every outcome, and after
every step the journal must agree with it: ``fold(events) == slots`` (``verify``), the
projection equals the model, at most one current slot per agent, and a refused call wrote
nothing (event and outbox counts match the model's).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from calsched.errors import AgentBusyError, InvalidTransitionError, SlotNotFoundError
from calsched.journal import Journal, TransitionRequest
from calsched.model import (
    CURRENT_STATES,
    REPORTED_STATES,
    TERMINAL_STATES,
    Actor,
    Slot,
    SlotState,
    Trigger,
)

S = SlotState
T = Trigger

SLOT_IDS = ["s0", "s1", "s2", "s3"]
AGENTS = ["agent-0", "agent-1"]
PLAIN_TRIGGERS = [t for t in Trigger if t not in (T.receive, T.reconcile)]
#: Triggers that move a live slot on without ending it (complete ends it, as work does).
FORWARD = [T.dispatch, T.woke, T.pause, T.resume, T.complete]

#: The oracle: (state, trigger, reconcile target) -> new state; anything else is refused.
TABLE: dict[tuple[SlotState | None, Trigger, SlotState | None], SlotState] = {
    (None, T.receive, None): S.pending,
    (S.completed, T.receive, None): S.pending,
    (S.aborted, T.receive, None): S.pending,
    (S.pending, T.dispatch, None): S.dispatching,
    (S.dispatching, T.woke, None): S.in_progress,
    (S.dispatching, T.wake_failed, None): S.aborted,
    (S.in_progress, T.pause, None): S.paused,
    (S.paused, T.resume, None): S.in_progress,
    (S.in_progress, T.complete, None): S.completed,
    (S.paused, T.complete, None): S.completed,
    **{(s, T.abort, None): S.aborted for s in (S.pending, S.dispatching, S.in_progress, S.paused)},
    **{(s, T.reconcile, S.completed): S.completed for s in SlotState if s is not S.completed},
    **{(s, T.reconcile, S.aborted): S.aborted for s in SlotState if s is not S.aborted},
}

SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: Filled while the machine runs; the test reports it.
STATS: Counter[str] = Counter()


@dataclass(frozen=True)
class Modelled:
    """What the model knows of a slot."""

    state: SlotState
    attempt: int
    agent: str


Model = dict[str, Modelled]


def predict(
    model: Model, request: TransitionRequest, agent: str | None
) -> Modelled | type[Exception]:
    """The slot after ``request``, or the error the journal must raise (in its order)."""
    known = model.get(request.slot_id)
    if request.trigger is not T.receive and known is None:
        return SlotNotFoundError
    if request.attempt is not None and known is not None and known.attempt != request.attempt:
        return InvalidTransitionError
    state = known.state if known else None
    new_state = TABLE.get((state, request.trigger, request.target))
    if new_state is None:
        return InvalidTransitionError
    if request.trigger is T.receive:
        assert agent is not None
        after = Modelled(new_state, known.attempt + 1 if known else 1, agent)
    else:
        assert known is not None
        after = Modelled(new_state, known.attempt, known.agent)
    if new_state in CURRENT_STATES and state not in CURRENT_STATES:
        busy = any(
            other.agent == after.agent and other.state in CURRENT_STATES
            for slot_id, other in model.items()
            if slot_id != request.slot_id
        )
        if busy:
            return AgentBusyError
    return after


class JournalMachine(RuleBasedStateMachine):
    """Random triggers against one SQLite journal and a dict model of it."""

    def __init__(self) -> None:
        super().__init__()
        # Hypothesis builds a fresh machine per example: a fresh directory each time.
        self.directory = Path(tempfile.mkdtemp(prefix="calsched-machine-"))
        self.url = f"sqlite:///{self.directory / 'journal.db'}"
        self.journal = Journal.open(self.url, "host-a", upgrade=True, synchronous="OFF")
        self.model: Model = {}
        self.events = 0
        self.outbox = 0
        STATS["examples"] += 1

    def teardown(self) -> None:
        """Close the journal and remove its directory."""
        self.journal.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- firing --------------------------------------------------------------------------

    def _request(
        self,
        slot_id: str,
        trigger: Trigger,
        *,
        agent: str | None = None,
        actor: Actor = Actor.scheduler,
        target: SlotState | None = None,
        attempt_offset: int | None = None,
    ) -> TransitionRequest:
        attempt = None
        if attempt_offset is not None:
            known = self.model.get(slot_id)
            attempt = max(1, (known.attempt if known else 1) + attempt_offset)
        slot = Slot(id=slot_id, agent_id=agent) if trigger is T.receive and agent else None
        return TransitionRequest(slot_id, trigger, actor, slot=slot, target=target, attempt=attempt)

    def _apply(self, requests: list[tuple[TransitionRequest, str | None]]) -> None:
        """Apply a batch; the model predicts all of it, or the first refusal."""
        simulated = dict(self.model)
        expected: type[Exception] | None = None
        for request, agent in requests:
            outcome = predict(simulated, request, agent)
            if isinstance(outcome, Modelled):
                simulated[request.slot_id] = outcome
            else:
                expected = outcome
                break
        batch = [r for r, _ in requests]
        if expected is not None:
            with pytest.raises(expected):
                self.journal.apply_many(batch)
            STATS[f"refused {expected.__name__}"] += 1
            return
        appended = self.journal.apply_many(batch)
        assert len(appended) == len(batch)
        for event in appended:
            self.events += 1
            if event.state_to in REPORTED_STATES and event.kind is not T.reconcile:
                self.outbox += 1
            STATS[f"applied {event.kind.value}"] += 1
        self.model = simulated

    @initialize(
        slots=st.lists(
            st.tuples(st.sampled_from(SLOT_IDS), st.sampled_from(AGENTS)),
            min_size=1,
            max_size=3,
            unique_by=lambda pair: pair[0],
        )
    )
    def first_slots(self, slots: list[tuple[str, str]]) -> None:
        """Start with a few received slots, so every example has something to move."""
        for slot_id, agent in slots:
            self.receive(slot_id, agent)

    @rule(slot_id=st.sampled_from(SLOT_IDS), agent=st.sampled_from(AGENTS))
    def receive(self, slot_id: str, agent: str) -> None:
        """The backend lists a slot (new, re-listed while live, or a new attempt)."""
        self._apply([(self._request(slot_id, T.receive, agent=agent, actor=Actor.backend), agent)])

    @rule(
        slot_id=st.sampled_from(SLOT_IDS),
        trigger=st.sampled_from(PLAIN_TRIGGERS),
        actor=st.sampled_from(Actor),
        attempt_offset=st.one_of(st.none(), st.sampled_from([0, 0, -1, 1])),
    )
    def fire(
        self, slot_id: str, trigger: Trigger, actor: Actor, attempt_offset: int | None
    ) -> None:
        """Any trigger but receive/reconcile, maybe fenced to (or off) the current attempt."""
        request = self._request(slot_id, trigger, actor=actor, attempt_offset=attempt_offset)
        self._apply([(request, None)])

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        """A forward trigger the table allows from a known slot's state (agent may be busy)."""
        # Random triggers alone rarely get a slot past dispatching.
        slot_id = data.draw(st.sampled_from(sorted(self.model)), label="slot")
        state = self.model[slot_id].state
        choices = [t for t in FORWARD if (state, t, None) in TABLE]
        if not choices:  # terminal: receive and reconcile have rules of their own
            return
        trigger = data.draw(st.sampled_from(choices), label="trigger")
        request = self._request(slot_id, trigger, actor=Actor.agent, attempt_offset=0)
        self._apply([(request, None)])

    # (``target`` is a reserved argument of @rule, hence ``status``.)
    @rule(slot_id=st.sampled_from(SLOT_IDS), status=st.sampled_from([S.completed, S.aborted]))
    def reconcile(self, slot_id: str, status: SlotState) -> None:
        """The backend declares a terminal status."""
        request = self._request(slot_id, T.reconcile, actor=Actor.backend, target=status)
        self._apply([(request, None)])

    @rule(
        steps=st.lists(
            st.tuples(
                st.sampled_from(SLOT_IDS),
                st.sampled_from([T.receive, T.dispatch, T.woke, T.complete, T.abort]),
                st.sampled_from(AGENTS),
            ),
            min_size=2,
            max_size=4,
        )
    )
    def batch(self, steps: list[tuple[str, Trigger, str]]) -> None:
        """Several transitions in one transaction: all of them, or none."""
        requests = [
            (self._request(slot_id, trigger, agent=agent), agent if trigger is T.receive else None)
            for slot_id, trigger, agent in steps
        ]
        self._apply(requests)

    def _queued_behind_busy_agent(self) -> list[str]:
        busy = {m.agent for m in self.model.values() if m.state in CURRENT_STATES}
        return sorted(
            slot_id for slot_id, m in self.model.items() if m.state is S.pending and m.agent in busy
        )

    @precondition(lambda self: bool(self._queued_behind_busy_agent()))
    @rule(data=st.data())
    def contend(self, data: st.DataObject) -> None:
        """Dispatch a slot queued behind its agent's current slot: must be AgentBusyError."""
        slot_id = data.draw(st.sampled_from(self._queued_behind_busy_agent()), label="slot")
        self._apply([(self._request(slot_id, T.dispatch), None)])

    @precondition(lambda self: self.events > 0)
    @rule()
    def reopen(self) -> None:
        """Close the database and open it again: a restart must find the same journal."""
        self.journal.close()
        self.journal = Journal.open(self.url, "host-a", synchronous="OFF")
        STATS["reopened"] += 1

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        """fold == projection == model; one current slot per agent; refusals wrote nothing."""
        STATS["steps"] += 1
        assert self.journal.verify() == []
        views = self.journal.history()
        assert {v.slot_id: Modelled(v.state, v.attempt, v.agent_id) for v in views} == self.model
        current = Counter(v.agent_id for v in views if v.state in CURRENT_STATES)
        assert all(n <= 1 for n in current.values()), current
        events = self.journal.events()
        assert len(events) == self.events
        assert len(self.journal.outbox_rows()) == self.outbox
        # After a terminal event only a reconcile (the backend's word) may follow in that
        # attempt; anything else must open a new attempt.
        ended: set[tuple[str, int]] = set()
        for event in events:
            key = (event.slot_id, event.attempt)
            assert key not in ended or event.kind is T.reconcile, event
            if event.state_to in TERMINAL_STATES:
                ended.add(key)


def test_journal_state_machine(record_property: Any) -> None:
    """Random valid and invalid triggers, batches and reopens keep the journal consistent."""
    STATS.clear()
    run_state_machine_as_test(JournalMachine, settings=SETTINGS)
    summary = dict(sorted(STATS.items()))
    record_property("hypothesis", summary)
    print(f"journal state machine: {summary}")
    assert STATS["examples"] >= SETTINGS.max_examples
    assert STATS["steps"] > STATS["examples"]
    # The common outcomes must all have happened, or the machine proves little. (Rarer ones,
    # such as AgentBusyError, are in the printed summary; test_journal.py pins them.)
    for outcome in (
        "applied receive",
        "applied dispatch",
        "applied reconcile",
        "refused InvalidTransitionError",
        "refused SlotNotFoundError",
        "reopened",
    ):
        assert STATS[outcome] > 0, outcome
