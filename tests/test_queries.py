"""The journal's report queries: filtered, counted and streamed slots and events
(SQLite and PostgreSQL), and the batch progress of long reads."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from calsched.journal import Journal
from calsched.journal.queries import reported
from calsched.model import SlotState, SlotView
from tests.conftest import FakeClock


@pytest.fixture
def timed(open_journal: Callable[..., Journal], drive: Callable[..., SlotView]) -> Journal:
    """On a clock that moves a minute a slot: s0..s5, s2 (agent-b) and s5 (agent-c) in
    progress, the others (agent-a) completed; more events of another identifier."""
    clock = FakeClock()
    journal = open_journal("host-a", clock=clock)
    for index in range(6):
        agent = {2: "agent-b", 5: "agent-c"}.get(index, "agent-a")
        target = SlotState.completed if agent == "agent-a" else SlotState.in_progress
        drive(journal, f"s{index}", target, agent_id=agent)
        clock.advance(60)
    drive(open_journal("host-b"), "other", SlotState.completed)
    return journal


def test_count_and_stream_events_filter_alike(timed: Journal) -> None:
    """Every filter counts what the stream yields, in seq order, of this identifier only."""
    start = timed.events(limit=1)[0].recorded_at
    cases = [
        {},
        {"slot_id": "s1"},
        {"agent_id": "agent-b"},
        {"since": start + timedelta(minutes=2)},
        {"until": start + timedelta(minutes=2)},
        {"agent_id": "agent-a", "since": start + timedelta(minutes=1)},
        {"slot_id": "nothing"},
    ]
    for where in cases:
        found = list(timed.stream_events(**where))  # type: ignore[arg-type]
        assert timed.count_events(**where) == len(found), where  # type: ignore[arg-type]
        assert [e.seq for e in found] == sorted(e.seq for e in found)
        assert {e.identifier for e in found} <= {"host-a"}
    by_agent = list(timed.stream_events(agent_id="agent-b"))
    assert {e.slot_id for e in by_agent} == {"s2"}
    late = list(timed.stream_events(since=start + timedelta(minutes=5)))
    assert {e.slot_id for e in late} == {"s5"}
    assert timed.count_events() == len(timed.events())


def test_stream_events_last_keeps_the_newest_oldest_first(timed: Journal) -> None:
    """last=N yields the N newest events, still in seq order."""
    every = [e.seq for e in timed.stream_events()]
    assert [e.seq for e in timed.stream_events(last=3)] == every[-3:]
    assert [e.seq for e in timed.stream_events(last=100)] == every
    one = [e.kind.value for e in timed.stream_events("s1", last=2)]
    assert one == ["woke", "complete"]


def test_count_and_stream_history_filter_alike(timed: Journal) -> None:
    """History's stream is newest change first; its count ignores the limit."""
    newest = [v.slot_id for v in timed.stream_history()]
    assert newest == [v.slot_id for v in timed.history()]
    assert newest[0] == "s5"
    assert [v.slot_id for v in timed.stream_history(limit=2)] == newest[:2]
    assert timed.count_history() == 6
    assert timed.count_history(state=SlotState.in_progress) == 2
    assert timed.count_history(agent_id="agent-a") == 4
    first = timed.get("s0")
    assert first is not None
    assert timed.count_history(until=first.updated_at + timedelta(seconds=1)) == 1


def test_a_stream_is_lazy_and_can_be_closed(timed: Journal) -> None:
    """A stream reads as it is iterated; closing it part-way releases its connection."""
    stream = timed.stream_events()
    assert next(stream).seq >= 1
    stream.close()
    assert timed.engine.pool.checkedout() == 0


def test_verify_and_rebuild_report_progress_by_batch(timed: Journal) -> None:
    """The progress callback adds up to every event read, in at most one call a batch."""
    calls: list[int] = []
    assert timed.verify(calls.append) == []
    assert sum(calls) == timed.count_events()
    assert len(calls) == 1  # one batch of yield_per rows
    calls.clear()
    assert timed.rebuild(calls.append) == 6
    assert sum(calls) == timed.count_events()


def test_reported_passes_rows_through_and_counts_batches() -> None:
    """reported() yields every row in order and tells the callback once per partition."""

    class Batches:
        def partitions(self) -> list[list[int]]:
            return [[1, 2], [3], [4, 5, 6]]

    told: list[int] = []
    assert list(reported(Batches(), told.append)) == [1, 2, 3, 4, 5, 6]
    assert told == [2, 1, 3]
    rows = [1, 2]
    assert reported(rows, None) is rows
