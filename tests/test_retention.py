"""Retention: ended slots exported then deleted, the rest kept and counted, the hash
chain verifiable across the cut and still catching tampering, on SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from calsched.journal import Journal
from calsched.journal.chain import CONTENT, link, read_head
from calsched.journal.dead_letters import DeadLetters
from calsched.journal.retention import PRUNE, Retention
from calsched.journal.schema import chain_checkpoints, events
from calsched.model import Actor, SlotState, SlotView, Trigger
from tests.conftest import FakeClock, request_for

Drive = Callable[..., SlotView]


@pytest.fixture
def timed(open_journal: Callable[..., Journal], clock: FakeClock) -> Journal:
    """A journal on the fake clock."""
    return open_journal("host-a", clock=clock)


def _scene(journal: Journal, clock: FakeClock, drive: Drive) -> dict[str, Any]:
    """Old ended slots interleaved with a paused one, an old ended slot whose update is
    still waiting, and a slot ended after the cut; every outbox row delivered but one."""
    drive(journal, "old1", SlotState.completed, agent_id="a1")
    clock.advance(10)
    drive(journal, "live", SlotState.paused, agent_id="a2")
    clock.advance(10)
    drive(journal, "old2", SlotState.aborted, agent_id="a3")
    drive(journal, "old3", SlotState.completed, agent_id="a4")
    drive(journal, "waiting", SlotState.aborted, agent_id="a5")
    for row in journal.outbox_rows():
        if row.slot_id != "waiting":
            journal.mark_delivered(row.id)
    clock.advance(3600)
    cut = clock.advance(1)
    clock.advance(10)
    journal.apply(request_for("live", Trigger.resume))  # a kept event after the cut
    drive(journal, "recent", SlotState.completed, agent_id="a6")
    for row in journal.outbox_rows():
        if row.slot_id != "waiting" and row.delivered_at is None:
            journal.mark_delivered(row.id)
    return {"cut": cut, "events": journal.events()}


def _retention(journal: Journal, **kw: Any) -> Retention:
    return Retention(journal.engine, journal.identifier, check=journal.check_fence, **kw)


@pytest.mark.parametrize("batch_slots", [1000, 1])
def test_prune_removes_ended_slots_and_keeps_the_chain(
    timed: Journal, clock: FakeClock, drive: Drive, tmp_path: Path, batch_slots: int
) -> None:
    """Ended-before slots gone (events, outbox, projection), exported exactly; the live,
    the waiting and the recent kept; verify passes after; the next append chains on."""
    scene = _scene(timed, clock, drive)
    retention = _retention(timed, batch_slots=batch_slots)
    plan = retention.plan(scene["cut"])
    assert plan.slots == ("old1", "old2", "old3")
    assert (plan.kept_not_ended, plan.kept_pending_outbox, plan.kept_recent) == (1, 1, 1)
    gone = [e for e in scene["events"] if e.slot_id in plan.slots]
    assert plan.events == len(gone) == 10
    head = timed.verify_chain().head
    export = tmp_path / "old.jsonl.gz"
    report = retention.prune(plan, export=export, progress=None)
    assert report.events_removed == 10
    with gzip.open(export, "rt") as lines:
        exported = [json.loads(line) for line in lines]
    assert [e["event_id"] for e in exported] == [e.event_id for e in gone]
    assert exported[0]["recorded_at"].endswith("Z")
    assert report.export_sha256 == hashlib.sha256(export.read_bytes()).hexdigest()
    assert report.export_bytes == export.stat().st_size
    assert {v.slot_id for v in timed.history()} == {"live", "waiting", "recent"}
    assert timed.outbox_rows(slot_id="old1") == []
    assert timed.verify() == []
    after = timed.verify_chain()
    assert (after.broken, after.head, after.events) == (None, head, len(scene["events"]) - 10)
    assert after.checkpoints == report.checkpoints == 2  # two runs of removed events
    drive(timed, "next", SlotState.completed, agent_id="a7")
    assert timed.verify_chain().broken is None
    (action,) = [a for a in DeadLetters(timed.engine, "host-a").actions() if a.action == PRUNE]
    assert action.actor is Actor.operator
    assert "old.jsonl.gz" in (action.reason or "")


def test_each_exported_line_chains_from_its_predecessor(
    timed: Journal, clock: FakeClock, drive: Drive, tmp_path: Path
) -> None:
    """An export line carries the content and the hash: merged with the kept events by
    seq, the whole chain can be checked offline."""
    scene = _scene(timed, clock, drive)
    before = {e.seq: e for e in scene["events"]}
    with timed.engine.connect() as conn:
        chains = dict(conn.execute(select(events.c.seq, events.c.chain)).all())
    retention = _retention(timed)
    retention.prune(retention.plan(scene["cut"]), export=tmp_path / "x.gz")
    with gzip.open(tmp_path / "x.gz", "rt") as lines:
        for line in lines:
            row = json.loads(line)
            seq = row["seq"]
            previous = max(s for s in before if s < seq) if seq != min(before) else None
            parent = chains[previous] if previous is not None else "0" * 64
            row["recorded_at"] = before[seq].recorded_at
            assert link(parent, row) == row["chain"] == chains[seq]


def test_tampering_after_a_prune_is_caught(
    timed: Journal, clock: FakeClock, drive: Drive, tmp_path: Path
) -> None:
    """A kept event edited, or a checkpoint's hash changed, after the prune: caught."""
    scene = _scene(timed, clock, drive)
    retention = _retention(timed)
    retention.prune(retention.plan(scene["cut"]), export=None)
    kept = timed.events()
    victim = kept[len(kept) // 2]
    with timed.engine.begin() as conn:
        conn.execute(text("UPDATE events SET reason = 'x' WHERE seq = :s"), {"s": victim.seq})
    broken = timed.verify_chain().broken
    assert broken is not None
    assert (broken.seq, broken.what) == (victim.seq, CONTENT)
    with timed.engine.begin() as conn:
        conn.execute(text("UPDATE events SET reason = NULL WHERE seq = :s"), {"s": victim.seq})
        conn.execute(text("UPDATE chain_checkpoints SET chain = :c"), {"c": "e" * 64})
    broken = timed.verify_chain().broken
    assert broken is not None
    assert broken.seq is not None


def test_a_prune_of_the_newest_events_leaves_the_head_in_a_checkpoint(
    timed: Journal, clock: FakeClock, drive: Drive
) -> None:
    """The newest events removed: the head is the checkpoint's, and appends chain on."""
    drive(timed, "s1", SlotState.completed)
    drive(timed, "s2", SlotState.aborted, agent_id="a2")
    for row in timed.outbox_rows():
        timed.mark_delivered(row.id)
    head = timed.verify_chain().head
    retention = _retention(timed)
    report = retention.prune(retention.plan(clock.advance(1)), export=None)
    assert report.events_removed == 6
    with timed.engine.connect() as conn:
        assert read_head(conn, "host-a") == head
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 0
    assert timed.verify_chain().head == head
    drive(timed, "s3", SlotState.completed)
    report_after = timed.verify_chain()
    assert report_after.broken is None
    assert report_after.events == 4


def test_a_crash_between_batches_leaves_a_verifiable_journal(
    timed: Journal, clock: FakeClock, drive: Drive
) -> None:
    """One slot a batch, the second batch failing: what committed still verifies."""
    scene = _scene(timed, clock, drive)
    retention = _retention(timed, batch_slots=1)
    calls = {"n": 0}
    real = retention._delete

    def failing(conn: Any, slot_ids: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("crash")
        real(conn, slot_ids)

    retention._delete = failing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        retention.prune(retention.plan(scene["cut"]), export=None)
    assert timed.verify() == []
    assert timed.verify_chain().broken is None
    retention._delete = real  # type: ignore[method-assign]
    retention.prune(retention.plan(scene["cut"]), export=None)
    assert timed.verify_chain().broken is None
    with timed.engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(chain_checkpoints)).scalar_one()
    assert count == 2  # the interim one of the second run went with its last batch


def test_nothing_to_prune_changes_nothing(
    timed: Journal, clock: FakeClock, drive: Drive, snapshot: Callable[..., Any]
) -> None:
    """A cut before everything: an empty plan, no rows touched."""
    drive(timed, "s1", SlotState.completed)
    retention = _retention(timed)
    plan = retention.plan(clock.now - timedelta(days=1))
    assert plan.slots == ()
    before = snapshot(timed)
    assert retention.prune(plan, export=None).events_removed == 0
    assert snapshot(timed) == before
