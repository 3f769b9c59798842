"""Replay: the projection is the fold of the events; verify finds drift, rebuild repairs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, insert, select, update

from calsched.journal import Journal, Mismatch, TransitionRequest, fold
from calsched.journal.replay import diff, project
from calsched.journal.schema import slots
from calsched.model import Actor, Event, SlotState, SlotView, Trigger

S = SlotState
T = Trigger
Drive = Callable[..., SlotView]


def _populate(journal: Journal, drive: Drive) -> None:
    """Slots in every state, a second attempt and a reconcile."""
    for n, state in enumerate(SlotState):
        drive(journal, f"s{n}", state, agent_id=f"agent-{n}")
    drive(journal, "s4", S.paused, agent_id="agent-4")  # s4 was completed: attempt 2
    drive(journal, "r1", S.completed, agent_id="agent-r")
    journal.apply(TransitionRequest("r1", T.reconcile, Actor.backend, target=S.aborted, reason="x"))


def _projection(journal: Journal) -> dict[tuple[str, str], SlotView]:
    return {(v.identifier, v.slot_id): v for v in journal.history()}


def test_fold_of_events_equals_projection(journal: Journal, drive: Drive) -> None:
    """fold(events) gives exactly the stored slots rows, field by field."""
    _populate(journal, drive)
    folded = fold(journal.events())
    assert folded == _projection(journal)
    assert folded["host-a", "s4"].attempt == 2
    assert folded["host-a", "r1"].state is S.aborted
    assert journal.verify() == []


def test_verify_lists_tampered_slot_and_rebuild_fixes_it(journal: Journal, drive: Drive) -> None:
    """A projection changed behind the journal's back is reported, then rebuilt from events."""
    _populate(journal, drive)
    with journal.engine.begin() as conn:
        conn.execute(
            update(slots)
            .where(slots.c.identifier == "host-a", slots.c.slot_id == "s2")
            .values(state="completed", attempt=7)
        )
    mismatches = journal.verify()
    assert {(m.slot_id, m.field, m.stored, m.folded) for m in mismatches} == {
        ("s2", "state", S.completed, S.in_progress),
        ("s2", "attempt", 7, 1),
    }
    text = str(next(m for m in mismatches if m.field == "state"))
    assert text.startswith("host-a/s2: state: stored ")
    assert journal.rebuild() == 7
    assert journal.verify() == []
    view = journal.get("s2")
    assert view is not None
    assert (view.state, view.attempt) == (S.in_progress, 1)


def test_verify_reports_missing_and_extra_rows(journal: Journal, drive: Drive) -> None:
    """A deleted projection row is missing; a row without events is extra."""
    drive(journal, "s1", S.in_progress)
    drive(journal, "s2", S.pending, agent_id="agent-2")
    with journal.engine.begin() as conn:
        row = dict(conn.execute(select(slots).where(slots.c.slot_id == "s2")).mappings().one())
        conn.execute(delete(slots).where(slots.c.slot_id == "s2"))
        conn.execute(insert(slots), {**row, "slot_id": "phantom"})
    found = {(m.slot_id, m.field, m.stored, m.folded) for m in journal.verify()}
    assert found == {("phantom", "(row)", True, False), ("s2", "(row)", False, True)}
    assert journal.rebuild() == 2
    assert journal.verify() == []
    assert journal.get("phantom") is None


def test_rebuild_leaves_other_identifiers_alone(
    open_journal: Callable[..., Journal], drive: Drive
) -> None:
    """rebuild recomputes only its own identifier's projection."""
    a, b = open_journal("host-a"), open_journal("host-b")
    drive(a, "s1", S.paused)
    drive(b, "s1", S.completed)
    with b.engine.begin() as conn:
        conn.execute(update(slots).where(slots.c.identifier == "host-b").values(summary="edited"))
    assert a.rebuild() == 1
    assert [m.field for m in b.verify()] == ["summary"]
    assert a.verify() == []


def _event(seq: int, kind: Trigger, state_to: SlotState, **extra: object) -> Event:
    at = datetime(2026, 11, 27, 22, 0, seq, tzinfo=UTC)
    return Event(
        event_id=f"e{seq}",
        identifier="h",
        slot_id="s",
        attempt=1,
        agent_id="a",
        kind=kind,
        actor=Actor.scheduler,
        state_from=None,
        state_to=state_to,
        recorded_at=at,
        seq=seq,
        **extra,  # type: ignore[arg-type]
    )


def test_project_is_a_pure_fold_step() -> None:
    """project sets started_at on woke, clears reason on resume, resolves on terminal."""
    slot = {"slot": {"id": "s", "agent_id": "a"}}
    log = [
        _event(1, T.receive, S.pending, payload=slot),
        _event(2, T.dispatch, S.dispatching),
        _event(3, T.woke, S.in_progress),
        _event(4, T.pause, S.paused, reason="lunch"),
        _event(5, T.resume, S.in_progress),
        _event(6, T.complete, S.completed, summary="done"),
    ]
    view = fold(log)["h", "s"]
    assert view.started_at == log[2].recorded_at
    assert (view.reason, view.summary) == (None, "done")
    assert view.resolved_at == log[5].recorded_at
    assert view.last_seq == 6
    paused = fold(log[:4])["h", "s"]
    assert (paused.reason, paused.resolved_at) == ("lunch", None)
    assert fold([]) == {}


def test_project_refuses_events_before_receive_or_unappended() -> None:
    """An event before any receive is an error; so is projecting an unappended event."""
    with pytest.raises(ValueError, match="precedes any receive"):
        project(None, _event(1, T.dispatch, S.dispatching))
    with pytest.raises(AssertionError):
        project(None, replace(_event(1, T.dispatch, S.dispatching), seq=None))


def test_diff_compares_field_by_field() -> None:
    """diff reports missing, extra and changed rows in key order."""
    slot = {"slot": {"id": "s", "agent_id": "a"}}
    view = fold([_event(1, T.receive, S.pending, payload=slot)])["h", "s"]
    other = replace(view, slot_id="t")
    changed = replace(view, state=S.aborted, reason="gone")
    stored = {("h", "s"): changed, ("h", "t"): other}
    folded = {("h", "s"): view, ("h", "u"): other}
    assert diff(stored, folded) == [
        Mismatch("h", "s", "state", S.aborted, S.pending),
        Mismatch("h", "s", "reason", "gone", None),
        Mismatch("h", "t", "(row)", True, False),
        Mismatch("h", "u", "(row)", False, True),
    ]
    assert diff(folded, folded) == []
