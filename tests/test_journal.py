"""The journal, one suite for every database (``db_url``: SQLite file and PostgreSQL).

SQLite-only behaviour (pragmas, ``BEGIN IMMEDIATE`` under two writers) is at the end and
uses ``sqlite_url``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, select
from sqlalchemy.exc import IntegrityError

from calsched.errors import (
    AgentBusyError,
    ConfigError,
    InvalidTransitionError,
    JournalError,
    SlotNotFoundError,
)
from calsched.journal import Journal, OutboxCounts, TransitionRequest
from calsched.journal.schema import events
from calsched.model import CURRENT_STATES, Actor, Slot, SlotState, SlotView, Trigger

S = SlotState
T = Trigger

Snapshot = Callable[[Journal], dict[str, Any]]
Drive = Callable[..., SlotView]
Request = Callable[..., TransitionRequest]
Count = Callable[[Journal, str], int]


class Boom(Exception):
    """Raised by a test listener to cut a transaction short."""


@contextmanager
def fail_statement(engine: Engine, prefix: str) -> Iterator[None]:
    """Make the next statement starting with ``prefix`` fail, inside its transaction."""

    def listener(*args: Any) -> None:
        statement: str = args[2]
        if statement.lstrip().upper().startswith(prefix):
            raise Boom(prefix)

    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def current_of(journal: Journal, agent_id: str) -> list[str]:
    """The agent's current slots (dispatching, in progress or paused): at most one."""
    return [
        v.slot_id
        for v in journal.load_active()
        if v.agent_id == agent_id and v.state in CURRENT_STATES
    ]


# -- one transaction per transition -------------------------------------------------------

# (trigger, state before, state after, reported to the backend?)
WRITES = [
    (T.receive, None, S.pending, False),
    (T.dispatch, S.pending, S.dispatching, False),
    (T.woke, S.dispatching, S.in_progress, True),
    (T.complete, S.in_progress, S.completed, True),
]


@pytest.mark.parametrize(
    ("trigger", "state", "after", "reported"), WRITES, ids=[w[0].value for w in WRITES]
)
def test_transition_writes_event_projection_and_outbox(
    journal: Journal,
    drive: Drive,
    request_factory: Request,
    row_count: Count,
    trigger: Trigger,
    state: SlotState | None,
    after: SlotState,
    reported: bool,
) -> None:
    """receive/dispatch/woke/complete append one event, update the slot, queue reported ones."""
    if state is not None:
        drive(journal, "s1", state)
    counts = {t: row_count(journal, t) for t in ("events", "outbox")}
    event_ = journal.apply(request_factory("s1", trigger, summary="did it"))
    assert row_count(journal, "events") == counts["events"] + 1
    assert row_count(journal, "outbox") == counts["outbox"] + reported
    view = journal.get("s1")
    assert view is not None
    assert (view.state, view.last_seq, view.attempt) == (after, event_.seq, 1)
    assert journal.events("s1")[-1] == event_
    if reported:
        row = journal.outbox_rows(slot_id="s1")[-1]
        assert (row.event_seq, row.idempotency_key) == (event_.seq, event_.event_id)
        assert (row.status, row.attempt, row.summary) == (after, 1, "did it")
        assert row.occurred_at == row.next_try_at == event_.recorded_at
        assert (row.tries, row.delivered_at, row.dead_at, row.last_error) == (0, None, None, None)


@pytest.mark.parametrize(
    ("trigger", "state", "after", "reported"), WRITES, ids=[w[0].value for w in WRITES]
)
def test_transition_is_one_transaction(
    journal: Journal,
    drive: Drive,
    request_factory: Request,
    snapshot: Snapshot,
    trigger: Trigger,
    state: SlotState | None,
    after: SlotState,
    reported: bool,
) -> None:
    """A failure at the last write (the projection) leaves no event and no outbox row behind."""
    if state is not None:
        drive(journal, "s1", state)
    before = snapshot(journal)
    last_write = "INSERT INTO SLOTS" if trigger is T.receive else "UPDATE SLOTS"
    with fail_statement(journal.engine, last_write), pytest.raises(Boom):
        journal.apply(request_factory("s1", trigger))
    assert snapshot(journal) == before
    # The journal is still usable afterwards.
    assert journal.apply(request_factory("s1", trigger)).state_to is after


def test_times_are_aware_utc_and_round_trip(
    open_journal: Callable[..., Journal], clock: Any, drive: Drive
) -> None:
    """Times come back from the database as the same aware UTC instants the clock gave."""
    journal = open_journal(clock=clock)
    received = clock.now
    drive(journal, "s1", S.pending)
    started = clock.advance(5)
    journal.apply(TransitionRequest("s1", T.dispatch, Actor.scheduler))
    journal.apply(TransitionRequest("s1", T.woke, Actor.scheduler))
    view = journal.get("s1")
    assert view is not None
    assert (view.received_at, view.started_at, view.updated_at) == (received, started, started)
    assert view.updated_at.tzinfo is not None
    assert view.updated_at.utcoffset() == timedelta(0)
    assert [e.recorded_at for e in journal.events("s1")] == [received, started, started]


def test_summary_reason_and_timestamps_follow_the_lifecycle(
    open_journal: Callable[..., Journal], clock: Any, drive: Drive
) -> None:
    """pause keeps its reason until resume; started_at is the first woke; terminal resolves."""
    journal = open_journal(clock=clock)
    drive(journal, "s1", S.in_progress)
    started = clock.now
    clock.advance()
    journal.apply(TransitionRequest("s1", T.pause, Actor.agent, reason="lunch"))
    paused = journal.get("s1")
    assert paused is not None
    assert (paused.reason, paused.started_at, paused.resolved_at) == ("lunch", started, None)
    clock.advance()
    journal.apply(TransitionRequest("s1", T.resume, Actor.agent))
    resumed = journal.get("s1")
    assert resumed is not None
    assert (resumed.reason, resumed.started_at) == (None, started)
    done_at = clock.advance()
    journal.apply(TransitionRequest("s1", T.complete, Actor.agent, summary="report sent"))
    done = journal.get("s1")
    assert done is not None
    assert (done.summary, done.resolved_at, done.terminal) == ("report sent", done_at, True)


# -- batches -----------------------------------------------------------------------------


def test_apply_many_commits_a_batch_in_order(journal: Journal, request_factory: Request) -> None:
    """A batch may chain transitions of one slot; events get increasing seqs."""
    appended = journal.apply_many(
        [
            request_factory("s1", T.receive),
            request_factory("s2", T.receive, agent_id="agent-2"),
            request_factory("s1", T.dispatch),
            request_factory("s1", T.woke),
        ]
    )
    seqs = [e.seq for e in appended]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 4
    assert [e.state_to for e in appended] == [S.pending, S.pending, S.dispatching, S.in_progress]
    assert journal.get_many(["s1", "s2", "nope"]).keys() == {"s1", "s2"}
    assert journal.get_many(["s1"])["s1"].state is S.in_progress
    assert journal.get_many([]) == {}
    assert journal.apply_many([]) == []
    assert journal.verify() == []


def test_a_large_batch_writes_many_rows_per_statement_with_seqs_in_order(
    journal: Journal, request_factory: Request
) -> None:
    """A batch over the largest IN chunk: heads read in chunks, seqs follow the batch."""
    n = 600  # more than one chunk of heads (512), and a padded second one
    received = journal.apply_many(
        [request_factory(f"s{i}", T.receive, agent_id=f"a{i}") for i in range(n)]
    )
    dispatched = journal.apply_many(
        [request_factory(f"s{i}", T.dispatch) for i in reversed(range(n))]
    )
    seqs = [e.seq for e in received + dispatched]
    assert all(isinstance(seq, int) for seq in seqs)
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 2 * n
    # Stored in that order: the log read back is the batch, event for event.
    stored = [(e.slot_id, e.kind, e.seq) for e in journal.events()]
    assert stored[-2 * n :] == [(e.slot_id, e.kind, e.seq) for e in received + dispatched]
    active = journal.load_active()
    assert {v.state for v in active} == {S.dispatching}
    assert {v.slot_id: v.last_seq for v in active} == {e.slot_id: e.seq for e in dispatched}
    assert journal.verify() == []


def test_apply_each_in_skips_a_refused_request_and_commits_the_rest(
    journal: Journal, request_factory: Request, drive: Drive, snapshot: Snapshot
) -> None:
    """Each request on its own terms: refusals in place, the others written at once."""
    drive(journal, "busy", S.in_progress, agent_id="agent-9")
    drive(journal, "s1", S.dispatching)
    journal.apply(request_factory("s2", T.receive, agent_id="agent-2"))
    journal.apply(request_factory("s3", T.receive, agent_id="agent-9"))
    requests = [
        request_factory("s1", T.woke),
        request_factory("ghost", T.woke),  # unknown slot
        request_factory("s2", T.dispatch),
        request_factory("s2", T.dispatch),  # judged after the one before: now invalid
        request_factory("s3", T.dispatch),  # its agent is busy with a stored slot
        request_factory("s2", T.woke),
    ]
    with journal.engine.connect() as conn, conn.begin():
        applied, outcomes = journal.apply_each_in(conn, requests)
    kinds = [type(o) if o is not None else None for o in outcomes]
    assert kinds == [
        None,
        SlotNotFoundError,
        None,
        InvalidTransitionError,
        AgentBusyError,
        None,
    ]
    assert [(e.slot_id, e.kind) for e in applied.events] == [
        ("s1", T.woke),
        ("s2", T.dispatch),
        ("s2", T.woke),
    ]
    views = journal.get_many(["s1", "s2", "s3"])
    assert [views[s].state for s in ("s1", "s2", "s3")] == [S.in_progress, S.in_progress, S.pending]
    assert journal.verify() == []
    before = snapshot(journal)
    with journal.engine.connect() as conn, conn.begin():
        applied, outcomes = journal.apply_each_in(conn, [request_factory("s1", T.dispatch)])
    assert applied.events == []
    assert isinstance(outcomes[0], InvalidTransitionError)
    assert snapshot(journal) == before
    with journal.engine.connect() as conn, conn.begin():
        assert journal.apply_each_in(conn, []) == (applied, [])


def test_a_batch_of_dispatches_keeps_one_current_slot_per_agent(
    journal: Journal, request_factory: Request, drive: Drive
) -> None:
    """The batched busy check sees stored current slots and the batch's own."""
    drive(journal, "held", S.paused, agent_id="agent-1")
    journal.apply_many(
        [
            request_factory("s1", T.receive, agent_id="agent-1"),
            request_factory("s2", T.receive, agent_id="agent-2"),
            request_factory("s3", T.receive, agent_id="agent-2"),
        ]
    )
    with pytest.raises(AgentBusyError):  # agent-1 holds "held", stored
        journal.apply_many([request_factory("s2", T.dispatch), request_factory("s1", T.dispatch)])
    with pytest.raises(AgentBusyError):  # agent-2's s2 became current in this batch
        journal.apply_many([request_factory("s2", T.dispatch), request_factory("s3", T.dispatch)])
    assert journal.get_many(["s2"])["s2"].state is S.pending
    journal.apply_many([request_factory("held", T.abort), request_factory("s1", T.dispatch)])
    assert journal.get_many(["s1"])["s1"].state is S.dispatching


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (TransitionRequest("s1", T.complete, Actor.agent), InvalidTransitionError),
        (TransitionRequest("ghost", T.abort, Actor.operator), SlotNotFoundError),
        (TransitionRequest("s3", T.dispatch, Actor.scheduler), AgentBusyError),
    ],
    ids=["invalid-transition", "unknown-slot", "agent-busy"],
)
def test_apply_many_is_all_or_nothing(
    journal: Journal,
    request_factory: Request,
    snapshot: Snapshot,
    bad: TransitionRequest,
    error: type[Exception],
) -> None:
    """An invalid request in the middle of a batch leaves nothing of the batch written."""
    journal.apply(request_factory("s3", T.receive))  # agent-1's second slot, pending
    before = snapshot(journal)
    batch = [
        request_factory("s1", T.receive),
        request_factory("s1", T.dispatch),
        bad,
        request_factory("s2", T.receive, agent_id="agent-2"),
    ]
    with pytest.raises(error):
        journal.apply_many(batch)
    assert snapshot(journal) == before
    assert journal.get("s1") is None


def test_receive_needs_the_slot_with_its_id(
    journal: Journal, make_slot: Callable[..., Slot], snapshot: Snapshot
) -> None:
    """receive without the slot, or with another slot's body, is refused and writes nothing."""
    before = snapshot(journal)
    with pytest.raises(ValueError, match="receive needs the slot"):
        journal.apply(TransitionRequest("s1", T.receive, Actor.backend))
    with pytest.raises(ValueError, match="receive needs the slot"):
        journal.apply(TransitionRequest("s1", T.receive, Actor.backend, slot=make_slot("s2")))
    assert snapshot(journal) == before


# -- outbox ------------------------------------------------------------------------------


def test_outbox_rows_only_for_reported_states(
    journal: Journal, drive: Drive, request_factory: Request
) -> None:
    """Outbox rows only for in_progress/paused/completed/aborted, never for a reconcile."""
    drive(journal, "s1", S.paused)
    journal.apply(request_factory("s1", T.resume))
    journal.apply(request_factory("s1", T.complete))
    drive(journal, "s2", S.pending, agent_id="agent-2")
    journal.apply(request_factory("s2", T.abort))
    drive(journal, "s3", S.dispatching, agent_id="agent-3")
    journal.apply(request_factory("s3", T.wake_failed))
    drive(journal, "s4", S.in_progress, agent_id="agent-4")
    journal.apply(request_factory("s4", T.reconcile, target=S.completed))
    statuses = {
        slot: [r.status for r in journal.outbox_rows(slot_id=slot)]
        for slot in ("s1", "s2", "s3", "s4")
    }
    assert statuses == {
        "s1": [S.in_progress, S.paused, S.in_progress, S.completed],
        "s2": [S.aborted],
        "s3": [S.aborted],
        "s4": [S.in_progress],
    }
    assert [r.id for r in journal.outbox_rows()] == sorted(r.id for r in journal.outbox_rows())


def test_due_outbox_oldest_row_per_slot_in_order(
    open_journal: Callable[..., Journal], clock: Any, drive: Drive, request_factory: Request
) -> None:
    """due_outbox gives each slot's oldest undelivered row only, in row order."""
    journal = open_journal(clock=clock)
    drive(journal, "a", S.paused)  # rows: a/in_progress, a/paused
    drive(journal, "b", S.in_progress, agent_id="agent-2")  # row: b/in_progress
    journal.apply(request_factory("a", T.complete))  # row: a/completed
    rows = journal.outbox_rows()
    a1, a2, b1, a3 = rows
    assert [(r.slot_id, r.status) for r in rows] == [
        ("a", S.in_progress),
        ("a", S.paused),
        ("b", S.in_progress),
        ("a", S.completed),
    ]
    now = clock.now
    assert [r.id for r in journal.due_outbox(now)] == [a1.id, b1.id]
    assert [r.id for r in journal.due_outbox(now, limit=1)] == [a1.id]
    journal.mark_delivered(a1.id)
    assert [r.id for r in journal.due_outbox(now)] == [a2.id, b1.id]
    journal.mark_delivered(a2.id)
    journal.mark_delivered(b1.id)
    assert [r.id for r in journal.due_outbox(now)] == [a3.id]
    journal.mark_delivered(a3.id)
    assert journal.due_outbox(now) == []
    assert journal.outbox_counts() == OutboxCounts(pending=0, dead=0)


def test_mark_retry_defers_and_blocks_later_rows(
    open_journal: Callable[..., Journal], clock: Any, drive: Drive, request_factory: Request
) -> None:
    """A retried row is due again at next_try_at; the slot's later rows wait behind it."""
    journal = open_journal(clock=clock)
    drive(journal, "a", S.paused)
    first, _ = journal.outbox_rows(slot_id="a")
    later = clock.now + timedelta(seconds=30)
    journal.mark_retry(first.id, later, "HTTP 503 " + "x" * 3000)
    row = journal.outbox_rows(slot_id="a")[0]
    assert (row.tries, row.next_try_at) == (1, later)
    assert row.last_error is not None
    assert row.last_error.startswith("HTTP 503")
    assert len(row.last_error) == 2000
    assert journal.due_outbox(clock.now) == []
    assert [r.id for r in journal.due_outbox(later)] == [first.id]
    assert journal.outbox_counts() == OutboxCounts(pending=2, dead=0)


def test_mark_delivered_and_mark_dead(
    open_journal: Callable[..., Journal], clock: Any, drive: Drive
) -> None:
    """Delivered rows are done; dead rows are kept, counted, and stop blocking the slot."""
    journal = open_journal(clock=clock)
    drive(journal, "a", S.paused)
    first, second = journal.outbox_rows(slot_id="a")
    delivered_at = clock.advance()
    journal.mark_delivered(first.id, note="202")
    dead_at = clock.advance()
    journal.mark_dead(second.id, "HTTP 422: unknown slot")
    first, second = journal.outbox_rows(slot_id="a")
    assert (first.delivered_at, first.tries, first.last_error) == (delivered_at, 1, "202")
    assert (second.dead_at, second.tries, second.last_error) == (
        dead_at,
        1,
        "HTTP 422: unknown slot",
    )
    assert second.delivered_at is None
    assert journal.outbox_counts() == OutboxCounts(pending=0, dead=1, dead_slots=("a",))
    assert journal.due_outbox(clock.now) == []
    journal.apply(TransitionRequest("a", T.resume, Actor.agent))
    third = journal.outbox_rows(slot_id="a")[-1]
    assert [r.id for r in journal.due_outbox(clock.now)] == [third.id]


def test_settle_conflict_reconciles_and_stops_the_row(
    open_journal: Callable[..., Journal], clock: Any, drive: Drive, row_count: Count
) -> None:
    """A 409 journals a reconcile to the backend's status and marks the row delivered."""
    journal = open_journal(clock=clock)
    drive(journal, "s1", S.completed)
    started, row = journal.outbox_rows(slot_id="s1")
    journal.mark_delivered(started.id)
    assert row.status is S.completed
    outbox_before = row_count(journal, "outbox")
    settled_at = clock.advance()
    event_ = journal.settle_conflict(row, S.aborted, "cancelled by owner")
    assert event_ is not None
    assert (event_.kind, event_.actor, event_.state_from, event_.state_to) == (
        T.reconcile,
        Actor.backend,
        S.completed,
        S.aborted,
    )
    assert event_.reason == "cancelled by owner"
    view = journal.get("s1")
    assert view is not None
    assert (view.state, view.attempt, view.reason) == (S.aborted, 1, "cancelled by owner")
    stopped = journal.outbox_rows(slot_id="s1")[-1]
    assert stopped.id == row.id
    assert (stopped.delivered_at, stopped.last_error) == (settled_at, "409: backend holds aborted")
    assert row_count(journal, "outbox") == outbox_before  # the reconcile is not told back
    assert journal.due_outbox(clock.now) == []
    assert settled(journal, "s1") == settled_at
    assert journal.verify() == []


def test_settle_conflict_without_reconcile_when_nothing_to_change(
    journal: Journal, drive: Drive, request_factory: Request, row_count: Count
) -> None:
    """No event when the slot already holds the backend's status or moved to a new attempt."""
    drive(journal, "s1", S.aborted)
    row = journal.outbox_rows(slot_id="s1")[-1]
    events_before = row_count(journal, "events")
    assert journal.settle_conflict(row, S.aborted, None) is None
    assert row_count(journal, "events") == events_before
    assert journal.outbox_rows(slot_id="s1")[-1].delivered_at is not None

    drive(journal, "s2", S.completed)
    old_row = journal.outbox_rows(slot_id="s2")[-1]
    journal.apply(request_factory("s2", T.receive))  # attempt 2, pending
    events_before = row_count(journal, "events")
    assert journal.settle_conflict(old_row, S.aborted, "late") is None
    assert row_count(journal, "events") == events_before
    view = journal.get("s2")
    assert view is not None
    assert (view.state, view.attempt) == (S.pending, 2)


def settled(journal: Journal, slot_id: str) -> datetime | None:
    """``Journal.settled_at`` of one slot (``None`` for a live or unknown one too)."""
    view = journal.get(slot_id)
    return journal.settled_at([view] if view else []).get(slot_id)


def test_settled_at(open_journal: Callable[..., Journal], clock: Any, drive: Drive) -> None:
    """Settled once the terminal row is delivered or dead; never for live or unknown slots."""
    journal = open_journal(clock=clock)
    assert settled(journal, "ghost") is None
    drive(journal, "s1", S.in_progress)
    assert settled(journal, "s1") is None
    journal.apply(TransitionRequest("s1", T.complete, Actor.agent))
    assert settled(journal, "s1") is None  # the backend has not heard yet
    first, done = journal.outbox_rows(slot_id="s1")
    journal.mark_delivered(first.id)
    assert settled(journal, "s1") is None
    delivered = clock.advance()
    journal.mark_delivered(done.id)
    assert settled(journal, "s1") == delivered

    drive(journal, "s2", S.pending, agent_id="agent-2")
    journal.apply(TransitionRequest("s2", T.abort, Actor.operator))
    dead = clock.advance()
    journal.mark_dead(journal.outbox_rows(slot_id="s2")[-1].id, "HTTP 404")
    assert settled(journal, "s2") == dead

    drive(journal, "s3", S.pending, agent_id="agent-3")
    reconciled = clock.advance()
    journal.apply(TransitionRequest("s3", T.reconcile, Actor.backend, target=S.aborted))
    assert settled(journal, "s3") == reconciled


# -- attempts, agents, fencing ------------------------------------------------------------


def test_receive_after_terminal_starts_a_new_attempt(
    journal: Journal, drive: Drive, make_slot: Callable[..., Slot]
) -> None:
    """A terminal slot received again is attempt + 1, pending, with the new slot body."""
    drive(journal, "s1", S.completed)
    event_ = journal.apply(
        TransitionRequest("s1", T.receive, Actor.backend, slot=make_slot("s1", title="again"))
    )
    assert (event_.attempt, event_.state_from, event_.state_to) == (2, S.completed, S.pending)
    view = journal.get("s1")
    assert view is not None
    assert (view.state, view.attempt, view.slot.title) == (S.pending, 2, "again")
    assert (view.started_at, view.resolved_at, view.summary) == (None, None, None)
    journal.apply(TransitionRequest("s1", T.abort, Actor.operator))
    drive(journal, "s1", S.in_progress)
    attempts = [(e.attempt, e.kind) for e in journal.events("s1")]
    assert [a for a, _ in attempts] == [1, 1, 1, 1, 2, 2, 3, 3, 3]
    assert [r.attempt for r in journal.outbox_rows(slot_id="s1")] == [1, 1, 2, 3]


def test_at_most_one_current_slot_per_agent(
    journal: Journal, drive: Drive, request_factory: Request, snapshot: Snapshot
) -> None:
    """Dispatching a second slot of a busy agent raises AgentBusyError and writes nothing."""
    drive(journal, "s1", S.dispatching)
    drive(journal, "s2", S.pending)  # queued behind s1: pending is not current
    drive(journal, "s3", S.dispatching, agent_id="agent-2")  # other agents are free
    before = snapshot(journal)
    with pytest.raises(AgentBusyError) as info:
        journal.apply(request_factory("s2", T.dispatch))
    assert (info.value.agent_id, info.value.current) == ("agent-1", "s1")
    assert snapshot(journal) == before
    assert current_of(journal, "agent-1") == ["s1"]
    for step in (T.woke, T.pause, T.resume, T.complete):
        journal.apply(request_factory("s1", step))
        if step is not T.complete:
            with pytest.raises(AgentBusyError):
                journal.apply(request_factory("s2", T.dispatch))
    assert journal.apply(request_factory("s2", T.dispatch)).state_to is S.dispatching
    assert current_of(journal, "agent-1") == ["s2"]
    assert current_of(journal, "nobody") == []


def test_agent_busy_inside_one_batch(
    journal: Journal, request_factory: Request, snapshot: Snapshot
) -> None:
    """Two dispatches for one agent in one batch: the second is refused, the batch undone."""
    journal.apply_many([request_factory("s1", T.receive), request_factory("s2", T.receive)])
    before = snapshot(journal)
    with pytest.raises(AgentBusyError) as info:
        journal.apply_many([request_factory("s1", T.dispatch), request_factory("s2", T.dispatch)])
    assert info.value.current == "s1"
    assert snapshot(journal) == before
    # Within a batch the first slot may finish and free the agent for the next.
    journal.apply_many(
        [
            request_factory("s1", T.dispatch),
            request_factory("s1", T.wake_failed),
            request_factory("s2", T.dispatch),
        ]
    )
    assert current_of(journal, "agent-1") == ["s2"]


def test_attempt_fencing(
    journal: Journal, drive: Drive, request_factory: Request, snapshot: Snapshot
) -> None:
    """A request naming an old attempt is refused with the attempts in the error."""
    drive(journal, "s1", S.aborted)
    drive(journal, "s1", S.dispatching)  # attempt 2
    before = snapshot(journal)
    with pytest.raises(InvalidTransitionError) as info:
        journal.apply(request_factory("s1", T.woke, attempt=1))
    assert info.value.state == "dispatching (attempt 2, not 1)"
    assert info.value.trigger == "woke"
    assert snapshot(journal) == before
    assert journal.apply(request_factory("s1", T.woke, attempt=2)).attempt == 2


# -- reads -------------------------------------------------------------------------------


def test_load_active_reads_only_live_slots(
    journal: Journal, open_journal: Callable[..., Journal], drive: Drive
) -> None:
    """load_active returns non-terminal slots, oldest change first, after a reopen too."""
    for n, state in enumerate(
        [S.pending, S.completed, S.in_progress, S.aborted, S.paused, S.dispatching]
    ):
        drive(journal, f"s{n}", state, agent_id=f"agent-{n}")
    expected = ["s0", "s2", "s4", "s5"]
    assert [v.slot_id for v in journal.load_active()] == expected
    journal.close()
    reopened = open_journal("host-a", upgrade=False)
    assert [v.slot_id for v in reopened.load_active()] == expected
    assert [v.state for v in reopened.load_active()] == [
        S.pending,
        S.in_progress,
        S.paused,
        S.dispatching,
    ]


def test_history_filters(open_journal: Callable[..., Journal], clock: Any, drive: Drive) -> None:
    """history filters by agent, state and change window, newest first, with a limit."""
    journal = open_journal(clock=clock)
    t0 = clock.now
    drive(journal, "s1", S.pending)
    clock.advance(10)
    drive(journal, "s2", S.completed)
    clock.advance(10)
    drive(journal, "s3", S.in_progress, agent_id="agent-2")

    def ids(**filters: Any) -> list[str]:
        return [v.slot_id for v in journal.history(**filters)]

    assert ids() == ["s3", "s2", "s1"]
    assert ids(agent_id="agent-2") == ["s3"]
    assert ids(agent_id="agent-1") == ["s2", "s1"]
    assert ids(state=S.completed) == ["s2"]
    assert ids(since=t0 + timedelta(seconds=10)) == ["s3", "s2"]
    assert ids(until=t0 + timedelta(seconds=10)) == ["s1"]
    assert ids(since=t0 + timedelta(seconds=5), until=t0 + timedelta(seconds=15)) == ["s2"]
    assert ids(limit=2) == ["s3", "s2"]
    assert ids(agent_id="agent-1", state=S.pending) == ["s1"]
    assert ids(agent_id="nobody") == []


def test_events_reads_in_seq_order(journal: Journal, drive: Drive) -> None:
    """events() filters by slot, resumes after a seq and honours a limit."""
    drive(journal, "s1", S.in_progress)
    drive(journal, "s2", S.pending, agent_id="agent-2")
    every = journal.events()
    assert [e.seq for e in every] == sorted(e.seq for e in every)
    assert [e.kind for e in journal.events("s1")] == [T.receive, T.dispatch, T.woke]
    first = every[0].seq
    assert first is not None
    assert journal.events(after_seq=first) == every[1:]
    assert journal.events(limit=2) == every[:2]
    assert journal.events("ghost") == []


def test_identifiers_are_isolated(
    open_journal: Callable[..., Journal], drive: Drive, request_factory: Request
) -> None:
    """Two identifiers share a database without seeing or blocking each other's slots."""
    a = open_journal("host-a")
    b = open_journal("host-b")
    drive(a, "s1", S.in_progress)
    drive(b, "s1", S.dispatching)  # same slot id and agent, other host: allowed
    drive(b, "s2", S.completed, agent_id="agent-2")
    view_a, view_b = a.get("s1"), b.get("s1")
    assert view_a is not None
    assert view_b is not None
    assert (view_a.state, view_a.identifier) == (S.in_progress, "host-a")
    assert (view_b.state, view_b.identifier) == (S.dispatching, "host-b")
    assert a.get("s2") is None
    assert {e.identifier for e in a.events()} == {"host-a"}
    assert [v.slot_id for v in a.history()] == ["s1"]
    assert [v.slot_id for v in b.load_active()] == ["s1"]
    assert {r.identifier for r in a.outbox_rows()} == {"host-a"}
    assert a.outbox_counts() == OutboxCounts(pending=1, dead=0)
    assert b.outbox_counts() == OutboxCounts(pending=2, dead=0)
    assert {r.identifier for r in b.due_outbox(datetime.now(UTC) + timedelta(1))} == {"host-b"}
    assert a.rebuild() == 1
    assert a.verify() == []
    assert b.verify() == []
    assert b.get("s2") is not None
    with pytest.raises(SlotNotFoundError):
        a.apply(request_factory("s2", T.abort))


# -- the log itself ----------------------------------------------------------------------


def test_events_are_append_only(journal: Journal, drive: Drive, request_factory: Request) -> None:
    """Earlier event rows never change as later transitions are written."""
    drive(journal, "s1", S.in_progress)
    first = journal.events()
    journal.apply(request_factory("s1", T.pause))
    journal.apply(request_factory("s1", T.complete))
    drive(journal, "s1", S.aborted)
    later = journal.events()
    assert later[: len(first)] == first
    assert len({e.event_id for e in later}) == len(later)


def test_event_id_is_unique_in_the_database(journal: Journal, drive: Drive) -> None:
    """The database itself refuses a second event with the same event_id."""
    drive(journal, "s1", S.pending)
    with journal.engine.connect() as conn:
        row = dict(conn.execute(select(events)).mappings().one())
        conn.rollback()
        row.pop("seq")
        with pytest.raises(IntegrityError), conn.begin():
            conn.execute(insert(events), row)
    assert len(journal.events()) == 1


def test_errors_hide_row_values(
    journal: Journal,
    make_slot: Callable[..., Slot],
    monkeypatch: pytest.MonkeyPatch,
    snapshot: Snapshot,
) -> None:
    """A failing statement's JournalError (and its hidden cause) carry no parameter values."""
    secret = "payload-value-" + uuid.uuid4().hex
    fixed = uuid.uuid4()
    monkeypatch.setattr(uuid, "uuid4", lambda: fixed)  # two events, one event_id
    journal.apply(TransitionRequest("s1", T.receive, Actor.backend, slot=make_slot("s1")))
    before = snapshot(journal)
    slot = make_slot("s2", agent_id=secret, title=secret, prompt_text=secret)
    with pytest.raises(JournalError) as info:
        journal.apply(TransitionRequest("s2", T.receive, Actor.backend, slot=slot, summary=secret))
    message = str(info.value)
    assert message.startswith("journal write conflicted: ")  # an IntegrityError
    assert secret not in message
    assert "INSERT" not in message.upper()
    cause = info.value.__context__
    assert cause is not None
    assert info.value.__suppress_context__
    assert secret not in str(cause)
    assert "parameters hidden" in str(cause)
    assert snapshot(journal) == before


def test_open_reports_unusable_urls_without_secrets() -> None:
    """A URL that cannot be parsed, or a server that is not there, is one clear error."""
    with pytest.raises(ConfigError) as bad:
        Journal.open("not a url at all", "host-a")
    assert "not a url" not in str(bad.value)
    with pytest.raises(JournalError) as down:
        Journal.open("postgresql+psycopg://u:hunter2@127.0.0.1:1/nowhere", "host-a")
    assert "hunter2" not in str(down.value)
    assert str(down.value).startswith("cannot read the database: ")


# -- SQLite only ---------------------------------------------------------------------------


def _pragmas(journal: Journal) -> dict[str, Any]:
    with journal.engine.connect() as conn:
        return {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
        }


def test_sqlite_pragmas_default(sqlite_journal: Journal) -> None:
    """SQLite connections use WAL, synchronous FULL, a 5 s busy timeout and foreign keys."""
    assert _pragmas(sqlite_journal) == {
        "journal_mode": "wal",
        "synchronous": 2,
        "busy_timeout": 5000,
        "foreign_keys": 1,
    }
    assert sqlite_journal.engine.hide_parameters


@pytest.mark.parametrize(("level", "number"), [("OFF", 0), ("NORMAL", 1), ("EXTRA", 3)])
def test_sqlite_pragmas_configurable(sqlite_url: str, level: Any, number: int) -> None:
    """synchronous and the busy timeout come from Journal.open's arguments."""
    journal = Journal.open(
        sqlite_url, "host-a", synchronous=level, busy_timeout_ms=1234, upgrade=True
    )
    try:
        pragmas = _pragmas(journal)
    finally:
        journal.close()
    assert (pragmas["synchronous"], pragmas["busy_timeout"]) == (number, 1234)
    assert pragmas["journal_mode"] == "wal"


def test_two_engines_write_one_sqlite_file_concurrently(sqlite_url: str) -> None:
    """Two journals (two engines) writing one file from threads both succeed: no 'locked'."""
    journals = [Journal.open(sqlite_url, "host-a", upgrade=True) for _ in range(2)]
    per_thread = 15
    barrier = threading.Barrier(len(journals))
    failures: list[BaseException] = []

    def work(n: int, journal: Journal) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(per_thread):
                slot_id, agent = f"t{n}-s{i}", f"t{n}-agent-{i}"
                journal.apply(
                    TransitionRequest(
                        slot_id,
                        T.receive,
                        Actor.backend,
                        slot=Slot(id=slot_id, agent_id=agent),
                    )
                )
                for step in (T.dispatch, T.woke, T.complete):
                    journal.apply(TransitionRequest(slot_id, step, Actor.scheduler))
        except BaseException as exc:  # collected and asserted below, in the test thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n, j)) for n, j in enumerate(journals)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert failures == []
        assert len(journals[0].events()) == 4 * per_thread * len(journals)
        assert len(journals[1].history(state=S.completed)) == per_thread * len(journals)
        assert journals[0].verify() == []
    finally:
        for journal in journals:
            journal.close()


def test_ping_reads_the_journal(journal: Journal) -> None:
    """The readiness read answers on an empty journal (both databases)."""
    assert journal.ping() is None


def test_ping_fails_when_the_slots_table_is_gone(sqlite_journal: Journal) -> None:
    """A journal whose table cannot be read fails the ping with a JournalError."""
    from calsched.errors import JournalError

    with sqlite_journal.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE slots RENAME TO slots_away")
    try:
        with pytest.raises(JournalError):
            sqlite_journal.ping()
    finally:
        with sqlite_journal.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE slots_away RENAME TO slots")
