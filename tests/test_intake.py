"""The intake planner, rule by rule, on plain data (no journal, no event loop)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from calsched.journal import TransitionRequest
from calsched.model import Slot, SlotState, SlotView, Trigger
from calsched.scheduler.intake import Known, fresh_slots, human, lateness, plan_intake
from calsched.settings import QueuePolicy

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
SENT = NOW - timedelta(seconds=1)
T = Trigger


def slot(slot_id: str, agent: str = "alice", **fields: object) -> Slot:
    return Slot(**{"id": slot_id, "agent_id": agent, "title": "t", **fields})  # type: ignore[arg-type]


def nobody(agent_id: str) -> Sequence[SlotView]:
    return []


def plan(
    fresh: Sequence[Slot],
    known: dict[str, Known] | None = None,
    *,
    policy: QueuePolicy = QueuePolicy.queue,
    grace: float | None = None,
    of_agent: object = nobody,
) -> list[tuple[str, Trigger, str | None]]:
    requests: list[TransitionRequest] = plan_intake(
        fresh,
        known or {},
        of_agent,  # type: ignore[arg-type]
        sent_at=SENT,
        now=NOW,
        policy=policy,
        misfire_grace_s=grace,
    )
    return [(r.slot_id, r.trigger, r.reason) for r in requests]


def test_fresh_slots_are_listed_once_and_never_live_ones() -> None:
    listed = [slot("a"), slot("b"), slot("a", title="again"), slot("live")]
    fresh = fresh_slots(listed, lambda sid: sid == "live")
    assert [s.id for s in fresh] == ["a", "b"]
    assert fresh[0].title == "t"  # the first listing wins


def test_new_slots_are_received() -> None:
    assert plan([slot("a"), slot("b", "bob")]) == [("a", T.receive, None), ("b", T.receive, None)]


def test_a_slot_the_journal_has_live_is_left_to_its_intake() -> None:
    assert plan([slot("a")], {"a": Known(ended=False)}) == []


def test_an_ended_slot_is_new_only_after_the_backend_heard_the_end() -> None:
    unsettled = {"a": Known(ended=True, settled_at=None)}
    crossed = {"a": Known(ended=True, settled_at=SENT + timedelta(seconds=1))}
    heard = {"a": Known(ended=True, settled_at=SENT - timedelta(seconds=1))}
    assert plan([slot("a")], unsettled) == []
    assert plan([slot("a")], crossed) == []
    assert plan([slot("a")], heard) == [("a", T.receive, None)]


def test_a_late_slot_is_received_and_aborted_as_missed() -> None:
    late = slot("a", scheduled_at=NOW - timedelta(minutes=5, seconds=3))
    on_time = slot("b", scheduled_at=NOW - timedelta(seconds=10))
    assert plan([late, on_time], grace=60) == [
        ("a", T.receive, None),
        ("a", T.abort, "missed: late by 5m03s"),
        ("b", T.receive, None),
    ]
    assert lateness(late, NOW, None) is None  # no grace: never late


def test_replace_aborts_every_older_slot_of_the_agent() -> None:
    older = SlotView(
        identifier="h",
        slot_id="old",
        agent_id="alice",
        state=SlotState.in_progress,
        attempt=2,
        slot=slot("old"),
        received_at=NOW,
        started_at=NOW,
        updated_at=NOW,
        resolved_at=None,
        summary=None,
        reason=None,
        last_seq=1,
    )
    got = plan(
        [slot("n1"), slot("n2")],
        policy=QueuePolicy.replace,
        of_agent=lambda agent: [older] if agent == "alice" else [],
    )
    assert got == [
        ("n1", T.receive, None),
        ("n2", T.receive, None),
        ("old", T.abort, "superseded by n2"),
        ("n1", T.abort, "superseded by n2"),
    ]


def test_human_durations() -> None:
    assert human(timedelta(seconds=42)) == "42s"
    assert human(timedelta(seconds=303)) == "5m03s"
    assert human(timedelta(hours=3, minutes=7)) == "3h07m"
