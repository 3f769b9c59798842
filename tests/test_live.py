"""The live view: absorbing committed batches, and the per-agent index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from calsched.journal.replay import Change
from calsched.journal.store import Applied
from calsched.model import Slot, SlotState, SlotView
from calsched.scheduler.live import LiveView

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
S = SlotState


def view(slot_id: str, agent: str, state: SlotState, at: int, attempt: int = 1) -> SlotView:
    when = T0 + timedelta(seconds=at)
    return SlotView(
        identifier="h",
        slot_id=slot_id,
        agent_id=agent,
        state=state,
        attempt=attempt,
        slot=Slot(id=slot_id, agent_id=agent, title="t"),
        received_at=when,
        started_at=None,
        updated_at=when,
        resolved_at=None,
        summary=None,
        reason=None,
        last_seq=at,
    )


def change(state: SlotState, seq: int) -> Change:
    when = T0 + timedelta(seconds=seq)
    terminal = state in (S.completed, S.aborted)
    return Change(state, when, when, when if terminal else None, None, None, seq)


def test_received_slots_are_indexed_by_agent_in_receive_order() -> None:
    live = LiveView()
    ended = live.absorb(
        Applied([], {"b": view("b", "alice", S.pending, 2), "a": view("a", "alice", S.pending, 1)})
    )
    assert ended == []
    assert [v.slot_id for v in live.of_agent("alice")] == ["a", "b"]
    assert live.next_pending("alice") is live.get("a")
    assert live.current("alice") is None
    assert live.of_agent("bob") == []


def test_a_change_moves_a_live_slot_and_an_end_removes_it() -> None:
    live = LiveView()
    live.load([view("a", "alice", S.pending, 1), view("b", "alice", S.pending, 2)])
    live.absorb(Applied([], {"a": change(S.dispatching, 3)}))
    current = live.current("alice")
    assert current is not None
    assert current.slot_id == "a"
    assert live.next_pending("alice") is live.get("b")
    ended = live.absorb(Applied([], {"a": change(S.completed, 4)}))
    assert [v.slot_id for v in ended] == ["a"]
    assert ended[0].state is S.completed
    assert "a" not in live
    assert [v.slot_id for v in live.of_agent("alice")] == ["b"]
    assert len(live) == 1


def test_a_change_for_a_slot_not_live_is_ignored() -> None:
    """A reconcile of a slot that had already ended here does not bring it back."""
    live = LiveView()
    assert live.absorb(Applied([], {"gone": change(S.aborted, 9)})) == []
    assert len(live) == 0


def test_a_new_attempt_takes_its_new_place_in_the_order() -> None:
    live = LiveView()
    live.load([view("a", "alice", S.pending, 1), view("b", "alice", S.pending, 2)])
    live.absorb(Applied([], {"a": view("a", "alice", S.pending, 5, attempt=2)}))
    assert [v.slot_id for v in live.of_agent("alice")] == ["b", "a"]
    assert [v.slot_id for v in live.sorted()] == ["b", "a"]
    a = live.get("a")
    assert a is not None
    assert a.attempt == 2


def test_by_state_counts_the_live_slots() -> None:
    live = LiveView()
    assert live.by_state() == {}
    live.load([view("a", "alice", S.pending, 1), view("b", "alice", S.pending, 2)])
    live.absorb(Applied([], {"a": change(S.dispatching, 3)}))
    assert live.by_state() == {"dispatching": 1, "pending": 1}
    live.absorb(Applied([], {"a": change(S.aborted, 4)}))
    assert live.by_state() == {"pending": 1}
