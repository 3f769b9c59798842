"""The slot state machine: every (state, trigger) cell, through the journal.

The expected table is written out here independently of ``calsched.lifecycle._TABLE`` so
that a change to the machine has to change this table too. Cells run on SQLite (fast);
``tests/test_journal.py`` runs the journal itself against every database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import transitions

from calsched.errors import InvalidTransitionError, SlotNotFoundError
from calsched.journal import Journal
from calsched.lifecycle import SLOT_MACHINE, Step
from calsched.model import ACTIVE_STATES, Actor, SlotState, SlotView, Trigger

S = SlotState
T = Trigger

#: Every state a slot can be in before a trigger; ``None`` is a slot never received.
STATES: list[SlotState | None] = [None, *SlotState]

#: Every column of the table: a trigger, and for ``reconcile`` its terminal target.
COLUMNS: list[tuple[Trigger, SlotState | None]] = [
    *[(t, None) for t in Trigger if t is not T.reconcile],
    (T.reconcile, S.completed),
    (T.reconcile, S.aborted),
]

#: (state, trigger, target) -> the state it leads to. Every other cell is forbidden.
EXPECTED: dict[tuple[SlotState | None, Trigger, SlotState | None], SlotState] = {
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
    (S.pending, T.abort, None): S.aborted,
    (S.dispatching, T.abort, None): S.aborted,
    (S.in_progress, T.abort, None): S.aborted,
    (S.paused, T.abort, None): S.aborted,
    # The backend is canonical: reconcile reaches its terminal status from any other state,
    # a terminal one included (the 409 "I hold the other status" case).
    **{(s, T.reconcile, S.completed): S.completed for s in SlotState if s is not S.completed},
    **{(s, T.reconcile, S.aborted): S.aborted for s in SlotState if s is not S.aborted},
}

CELLS = [(state, trigger, target) for state in STATES for trigger, target in COLUMNS]

#: A valid path (after receive) into each state, and who fires each step.
PATHS: dict[SlotState, tuple[Trigger, ...]] = {
    S.pending: (),
    S.dispatching: (T.dispatch,),
    S.in_progress: (T.dispatch, T.woke),
    S.paused: (T.dispatch, T.woke, T.pause),
    S.completed: (T.dispatch, T.woke, T.complete),
    S.aborted: (T.abort,),
}


def _cell_id(cell: tuple[SlotState | None, Trigger, SlotState | None]) -> str:
    state, trigger, target = cell
    column = f"{trigger.value}->{target.value}" if target else trigger.value
    return f"{state.value if state else 'new'}-{column}"


def _label(state: SlotState | None) -> str:
    return state.value if state else "new"


def test_table_covers_every_cell() -> None:
    """The parametrisation has one cell per state and trigger (reconcile per target)."""
    assert len(CELLS) == len(STATES) * (len(Trigger) + 1) == 70
    assert set(EXPECTED) <= set(CELLS)


@pytest.mark.parametrize("cell", CELLS, ids=[_cell_id(c) for c in CELLS])
def test_transition_cell(
    cell: tuple[SlotState | None, Trigger, SlotState | None],
    sqlite_journal: Journal,
    request_factory: Callable[..., Any],
    snapshot: Callable[[Journal], dict[str, Any]],
    row_count: Callable[[Journal, str], int],
) -> None:
    """An allowed cell writes exactly one event and the expected state; a forbidden one nothing."""
    state, trigger, target = cell
    journal = sqlite_journal
    if state is not None:
        for step in (T.receive, *PATHS[state]):
            journal.apply(request_factory("s1", step))
    before = journal.get("s1")
    assert (before.state if before else None) is state
    rows_before = snapshot(journal)
    events_before = row_count(journal, "events")
    request = request_factory("s1", trigger, target=target)
    expected = EXPECTED.get(cell)

    if expected is not None:
        event = journal.apply(request)
        assert row_count(journal, "events") == events_before + 1
        after = journal.get("s1")
        assert after is not None
        assert after.state is expected
        assert (event.state_from, event.state_to, event.kind) == (state, expected, trigger)
        assert event.actor is request.actor
        assert after.last_seq == event.seq
        # receive after a terminal state opens a new attempt; everything else keeps it.
        assert after.attempt == (before.attempt + (trigger is T.receive) if before else 1)
        return

    # The machine refuses the cell with the documented error and fields...
    with pytest.raises(InvalidTransitionError) as info:
        SLOT_MACHINE.fire("s1", state, trigger, Actor.operator, target=target)
    assert (info.value.slot_id, info.value.state, info.value.trigger) == (
        "s1",
        _label(state),
        trigger.value,
    )
    # ...and so does the journal, writing nothing at all.
    if state is None:
        # A slot never received has no agent or attempt: the journal cannot even look it up.
        with pytest.raises(SlotNotFoundError) as missing:
            journal.apply(request)
        assert missing.value.slot_id == "s1"
    else:
        with pytest.raises(InvalidTransitionError) as info:
            journal.apply(request)
        assert (info.value.slot_id, info.value.state, info.value.trigger) == (
            "s1",
            state.value,
            trigger.value,
        )
    assert snapshot(journal) == rows_before
    assert journal.get("s1") == before


@pytest.mark.parametrize("cell", CELLS, ids=[_cell_id(c) for c in CELLS])
def test_machine_matches_table(cell: tuple[SlotState | None, Trigger, SlotState | None]) -> None:
    """SLOT_MACHINE.fire gives the expected table's step for every cell, or refuses it."""
    state, trigger, target = cell
    expected = EXPECTED.get(cell)
    if expected is None:
        with pytest.raises(InvalidTransitionError):
            SLOT_MACHINE.fire("s1", state, trigger, Actor.recovery, target=target)
        return
    step = SLOT_MACHINE.fire("s1", state, trigger, Actor.recovery, target=target)
    assert step == Step(trigger=trigger, actor=Actor.recovery, state_from=state, state_to=expected)


@pytest.mark.parametrize("state", STATES, ids=_label)
@pytest.mark.parametrize(
    "target", [None, *sorted(ACTIVE_STATES)], ids=lambda t: t.value if t else "no-target"
)
def test_reconcile_needs_a_terminal_target(
    state: SlotState | None, target: SlotState | None
) -> None:
    """reconcile without a target, or to a non-terminal state, is never allowed."""
    with pytest.raises(InvalidTransitionError) as info:
        SLOT_MACHINE.fire("s9", state, T.reconcile, Actor.backend, target=target)
    assert (info.value.slot_id, info.value.state, info.value.trigger) == (
        "s9",
        _label(state),
        "reconcile",
    )


def test_one_machine_shared_by_every_slot(
    sqlite_journal: Journal,
    request_factory: Callable[..., Any],
    drive: Callable[..., SlotView],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One Machine decides for every slot: no models are added and none is built per slot."""
    machine = SLOT_MACHINE._machine
    built: list[object] = []
    original_init = transitions.Machine.__init__

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(transitions.Machine, "__init__", counting_init)
    for n in range(40):
        drive(sqlite_journal, f"s{n}", S.completed, agent_id=f"agent-{n}")
        sqlite_journal.apply(request_factory(f"s{n}", T.reconcile, target=S.aborted))
    for _ in range(500):
        SLOT_MACHINE.fire("x", S.in_progress, T.pause, Actor.agent)
        SLOT_MACHINE.fire("x", S.paused, T.resume, Actor.agent)
    assert built == []
    assert SLOT_MACHINE._machine is machine
    assert machine.models == []
    assert not machine.auto_transitions
