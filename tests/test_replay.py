"""Replay: the projection is the fold of the events; verify finds drift, rebuild repairs it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, update

from calsched.journal import Journal, Mismatch, TransitionRequest, fold
from calsched.journal.replay import PLAIN_FIELDS, diff, drifted, fold_rows, project
from calsched.journal.schema import slots
from calsched.model import Actor, Event, Slot, SlotState, SlotView, Trigger

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


# -- the plain fold that verify streams ---------------------------------------------------

_KEYS = ("a", "b", "c")
_TEXTS = st.sampled_from([None, "", "x", "y"])


@st.composite
def _logs(draw: st.DrawFn) -> list[Event]:
    """Random logs: each slot starts with a receive; any trigger and state may follow
    (project does not judge transitions), re-receives included."""
    log: list[Event] = []
    attempts: dict[str, int] = {}
    at = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)
    for seq in range(1, draw(st.integers(0, 40)) + 1):
        slot_id = draw(st.sampled_from(_KEYS))
        kind = T.receive if slot_id not in attempts else draw(st.sampled_from(list(Trigger)))
        payload: dict[str, Any] = {}
        agent = f"agent-{slot_id}"
        if kind is T.receive:
            attempts[slot_id] = attempts.get(slot_id, 0) + 1
            agent = draw(st.sampled_from([agent, "other-agent"]))
            slot = Slot(id=slot_id, agent_id=agent, title=draw(_TEXTS), scheduled_at=at)
            extra = draw(st.sampled_from([{}, {"note": 1}]))  # extras: decoded, not cut
            payload = {**extra, "slot": slot.to_wire()}
        at += timedelta(seconds=draw(st.sampled_from([0, 1])))
        log.append(
            Event(
                event_id=f"e{seq}",
                identifier="h",
                slot_id=slot_id,
                attempt=attempts[slot_id],
                agent_id=agent,
                kind=kind,
                actor=Actor.scheduler,
                state_from=None,
                state_to=draw(st.sampled_from(list(SlotState))),
                recorded_at=at,
                summary=draw(_TEXTS),
                reason=draw(_TEXTS),
                payload=payload,
                seq=seq,
            )
        )
    return log


def _row(event: Event) -> tuple[Any, ...]:
    """The event as verify reads it: plain values, JSON as text."""
    return (
        event.seq,
        event.slot_id,
        event.attempt,
        event.agent_id,
        event.kind.value,
        event.state_to.value,
        event.summary,
        event.reason,
        json.dumps(dict(event.payload)),
        event.recorded_at,
    )


def _stored(view: SlotView) -> tuple[Any, ...]:
    """The view as verify reads its ``slots`` row: plain values, the slot as JSON text."""
    return (
        view.slot_id,
        view.agent_id,
        view.state.value,
        view.attempt,
        json.dumps(view.slot.to_wire()),
        view.received_at,
        view.started_at,
        view.updated_at,
        view.resolved_at,
        view.summary,
        view.reason,
        view.last_seq,
    )


@given(_logs(), st.data())
def test_plain_fold_equals_the_fold_by_project(log: list[Event], data: st.DataObject) -> None:
    """fold_rows over plain rows gives what fold (project) gives, and drifted sees any change."""
    typed = fold(log)
    stored = [_stored(view) for view in typed.values()]
    assert drifted(stored, fold_rows(_row(e) for e in log)) == set()
    if stored:
        # Any one field changed in one stored row is seen (as is a row missing).
        at = data.draw(st.integers(0, len(stored) - 1))
        field = data.draw(st.integers(1, len(PLAIN_FIELDS) - 1))
        row = list(stored[at])
        row[field] = '"changed"'  # valid JSON too, for the slot column
        tampered = [*stored[:at], tuple(row), *stored[at + 1 :]]
        assert drifted(tampered, fold_rows(_row(e) for e in log)) == {row[0]}
        assert drifted(stored[:at] + stored[at + 1 :], fold_rows(_row(e) for e in log)) == {row[0]}


def test_plain_fold_refuses_events_before_receive() -> None:
    """fold_rows, like project, refuses an event before any receive of its slot."""
    with pytest.raises(ValueError, match="precedes any receive"):
        fold_rows([_row(_event(1, T.dispatch, S.dispatching))])


def test_verify_judges_the_slot_by_value(journal: Journal, drive: Drive) -> None:
    """A stored slot spelt differently (keys reordered) is no mismatch; a changed one is,
    reported as typed slots."""
    drive(journal, "s1", S.in_progress)
    with journal.engine.begin() as conn:
        wire = conn.execute(select(slots.c.slot).where(slots.c.slot_id == "s1")).scalar_one()
        reordered = dict(reversed(list(wire.items())))
        conn.execute(update(slots).values(slot=reordered))
    assert journal.verify() == []
    with journal.engine.begin() as conn:
        conn.execute(update(slots).values(slot={**wire, "title": "edited"}))
    [mismatch] = journal.verify()
    assert mismatch.field == "slot"
    assert isinstance(mismatch.stored, Slot)
    assert isinstance(mismatch.folded, Slot)
    assert (mismatch.stored.title, mismatch.folded.title) == ("edited", "title of s1")


def test_views_read_back_share_their_strings(journal: Journal, drive: Drive) -> None:
    """A view read from the journal holds one string for its slot id and agent id, not two."""
    drive(journal, "s1", S.in_progress, agent_id="agent-7")
    drive(journal, "s2", S.pending, agent_id="agent-7")
    one, two = journal.load_active()
    assert one.slot_id is one.slot.id
    assert one.agent_id is one.slot.agent_id is two.agent_id
    assert one.identifier is two.identifier
