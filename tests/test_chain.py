"""The hash chain: canonical content, appends chained, tampering with raw SQL caught
(and named at the right event), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, text

from calsched.journal import Journal
from calsched.journal.chain import (
    CONTENT,
    GAP,
    GENESIS,
    INSERTED,
    NO_HASH,
    UNCHAINED,
    canonical,
    link,
    read_head,
    verify_chain,
)
from calsched.journal.schema import events
from calsched.model import SlotState, SlotView, Trigger
from tests.conftest import request_for

Drive = Callable[..., SlotView]

_ROW: dict[str, Any] = {
    "seq": 1,
    "event_id": "00000000-0000-4000-8000-000000000001",
    "identifier": "host-a",
    "slot_id": "s1",
    "attempt": 1,
    "agent_id": "agent-1",
    "kind": "receive",
    "actor": "backend",
    "state_from": None,
    "state_to": "pending",
    "summary": None,
    "reason": None,
    "payload": {"slot": {"id": "s1", "agent_id": "agent-1"}},
    "recorded_at": datetime(2026, 11, 27, 22, 0, tzinfo=UTC),
}


def _filled(journal: Journal, drive: Drive) -> list[dict[str, Any]]:
    """Three slots (10 events); every event row, in seq order."""
    drive(journal, "s1", SlotState.completed)
    drive(journal, "s2", SlotState.paused, agent_id="agent-2")
    drive(journal, "s3", SlotState.aborted, agent_id="agent-3")
    return _rows(journal)


def _rows(journal: Journal) -> list[dict[str, Any]]:
    with journal.engine.connect() as conn:
        stmt = events.select().where(events.c.identifier == journal.identifier)
        return [dict(r) for r in conn.execute(stmt.order_by(events.c.seq)).mappings()]


def _sql(journal: Journal, statement: str, **values: Any) -> None:
    with journal.engine.begin() as conn:
        conn.execute(text(statement), values)


# -- the format --------------------------------------------------------------------------


def test_canonical_form_is_pinned() -> None:
    """Sorted keys, no whitespace, microseconds and Z, null for None: the documented form
    (docs/integrity.md), and its hash from the genesis."""
    assert canonical(_ROW) == (
        b'{"actor":"backend","agent_id":"agent-1","attempt":1,'
        b'"event_id":"00000000-0000-4000-8000-000000000001","identifier":"host-a",'
        b'"kind":"receive","payload":{"slot":{"agent_id":"agent-1","id":"s1"}},'
        b'"reason":null,"recorded_at":"2026-11-27T22:00:00.000000Z","seq":1,'
        b'"slot_id":"s1","state_from":null,"state_to":"pending","summary":null}'
    )
    assert link(GENESIS, _ROW) == (
        "da0420efecb7cf08f4b8d5d9168d47aa4d2f5fc494efd2454e37d5054b3951c3"
    )


def test_every_meaningful_column_is_covered() -> None:
    """Changing any content column (seq included) changes the hash; order of keys not."""
    base = link(GENESIS, _ROW)
    changed = {
        "seq": 2,
        "event_id": "x",
        "identifier": "host-b",
        "slot_id": "s2",
        "attempt": 2,
        "agent_id": "agent-2",
        "kind": "dispatch",
        "actor": "agent",
        "state_from": "pending",
        "state_to": "aborted",
        "summary": "s",
        "reason": "r",
        "payload": {},
        "recorded_at": datetime(2026, 11, 27, 22, 0, 0, 1, tzinfo=UTC),
    }
    for name, value in changed.items():
        assert link(GENESIS, {**_ROW, name: value}) != base, name
    assert link(GENESIS, dict(reversed(list(_ROW.items())))) == base
    assert link("1" * 64, _ROW) != base


# -- appends -----------------------------------------------------------------------------


def test_appends_chain_each_event_to_the_one_before(journal: Journal, drive: Drive) -> None:
    """Every stored hash is link(previous, row), from the genesis; verify agrees."""
    rows = _filled(journal, drive)
    head = GENESIS
    for row in rows:
        head = link(head, row)
        assert row["chain"] == head
    report = journal.verify_chain()
    assert (report.events, report.head, report.broken) == (10, head, None)


def test_identifiers_have_chains_of_their_own(
    open_journal: Callable[..., Journal], drive: Drive
) -> None:
    """Two identifiers interleaved in one table: each chain starts at the genesis."""
    a, b = open_journal("host-a"), open_journal("host-b")
    for i in range(3):
        drive(a, f"a{i}", SlotState.completed, agent_id=f"agent-{i}")
        drive(b, f"b{i}", SlotState.aborted, agent_id=f"agent-{i}")
    for journal in (a, b):
        rows = _rows(journal)
        assert link(GENESIS, rows[0]) == rows[0]["chain"]
        assert journal.verify_chain().broken is None


def test_a_rolled_back_append_does_not_advance_the_head(journal: Journal, drive: Drive) -> None:
    """A transaction that appended and rolled back: the next append chains from what
    committed, not from the head the rolled-back one computed."""
    drive(journal, "s1", SlotState.in_progress)

    class Boom(Exception):
        pass

    def rolled_back() -> None:
        with journal._write() as conn:
            journal.apply_in(conn, [request_for("s1", Trigger.pause)])
            raise Boom

    with pytest.raises(Boom):
        rolled_back()
    drive(journal, "s2", SlotState.completed, agent_id="agent-2")
    assert journal.verify_chain().broken is None


def test_an_append_outside_the_journals_transactions_is_read_back(
    journal: Journal, drive: Drive
) -> None:
    """A transaction not opened by the journal (no commit hook): the head is read again."""
    drive(journal, "s1", SlotState.in_progress)
    with journal.engine.begin() as conn:
        journal.apply_in(conn, [request_for("s1", Trigger.pause)])
    drive(journal, "s2", SlotState.aborted, agent_id="agent-2")
    report = journal.verify_chain()
    assert (report.broken, report.events) == (None, 6)


def test_the_head_is_read_from_the_newest_event(journal: Journal, drive: Drive) -> None:
    """read_head: the genesis for an empty identifier, else its newest event's hash."""
    with journal.engine.connect() as conn:
        assert read_head(conn, "host-a") == GENESIS
    rows = _filled(journal, drive)
    with journal.engine.connect() as conn:
        assert read_head(conn, "host-a") == rows[-1]["chain"]
        assert read_head(conn, "nobody") == GENESIS


# -- tampering ---------------------------------------------------------------------------


def _broken(journal: Journal, anchor: str | None = None) -> tuple[int | None, str, str | None]:
    report = journal.verify_chain(anchor=anchor)
    assert report.broken is not None, "the tampering went unnoticed"
    return report.broken.seq, report.broken.what, report.broken.event_id


def test_an_edited_row_is_named(journal: Journal, drive: Drive) -> None:
    """A summary rewritten in place: that event's hash no longer matches its content."""
    rows = _filled(journal, drive)
    target = rows[3]  # s1's complete
    _sql(journal, "UPDATE events SET summary = 'forged' WHERE seq = :seq", seq=target["seq"])
    assert _broken(journal) == (target["seq"], CONTENT, target["event_id"])


def test_an_edited_payload_and_time_are_caught(journal: Journal, drive: Drive) -> None:
    """The payload and the time are content too."""
    rows = _filled(journal, drive)
    _sql(journal, "UPDATE events SET payload = :p WHERE seq = :seq", p="{}", seq=rows[0]["seq"])
    assert _broken(journal)[:2] == (rows[0]["seq"], CONTENT)
    _sql(journal, "UPDATE events SET payload = :p WHERE seq = :seq", p="{}", seq=rows[0]["seq"])


def test_a_deleted_row_is_a_seq_gap_at_the_next_event(journal: Journal, drive: Drive) -> None:
    """A row deleted from the middle: the event after it names the gap."""
    rows = _filled(journal, drive)
    gone, after = rows[5], rows[6]  # s2's dispatch (no outbox row), then its woke
    _sql(journal, "DELETE FROM events WHERE seq = :seq", seq=gone["seq"])
    seq, what, event_id = _broken(journal)
    assert (seq, event_id) == (after["seq"], after["event_id"])
    assert what.startswith(GAP)


def test_a_forged_row_with_a_bad_hash_is_named(journal: Journal, drive: Drive) -> None:
    """A row appended by SQL with a copied hash: that row is named."""
    rows = _filled(journal, drive)
    forged = {**rows[-1], "seq": rows[-1]["seq"] + 1, "event_id": "forged", "summary": "x"}
    with journal.engine.begin() as conn:
        conn.execute(events.insert().values(**forged))
    assert _broken(journal)[::2] == (forged["seq"], "forged")


def test_a_well_forged_row_in_the_middle_is_named(
    open_journal: Callable[..., Journal], drive: Drive
) -> None:
    """A row slipped between two events with a correctly computed hash: it chains, but
    the event after it chains from the one before it, which names the forged row."""
    a, b = open_journal("host-a"), open_journal("host-b")
    drive(a, "s1", SlotState.completed)
    drive(b, "x1", SlotState.pending)  # a seq between host-a's events, for the forgery
    drive(a, "s2", SlotState.completed, agent_id="agent-2")
    rows = _rows(a)
    (hole,) = _rows(b)
    forged = {**hole, "identifier": "host-a", "slot_id": "s1", "agent_id": "agent-1"}
    forged["chain"] = link(rows[3]["chain"], forged)
    with a.engine.begin() as conn:
        conn.execute(
            events.update().where(events.c.seq == hole["seq"]).values(**forged),
        )
    assert _broken(a) == (hole["seq"], INSERTED, hole["event_id"])


def test_reordered_rows_are_caught(journal: Journal, drive: Drive) -> None:
    """Two rows' seqs swapped: the first position no longer chains."""
    rows = _filled(journal, drive)
    one, two = rows[4]["seq"], rows[5]["seq"]  # s2's receive and dispatch: no outbox rows
    with journal.engine.begin() as conn:
        conn.execute(text("UPDATE events SET seq = :t WHERE seq = :a"), {"t": -1, "a": one})
        conn.execute(text("UPDATE events SET seq = :a WHERE seq = :b"), {"a": one, "b": two})
        conn.execute(text("UPDATE events SET seq = :b WHERE seq = :t"), {"b": two, "t": -1})
    assert _broken(journal) == (one, UNCHAINED, rows[5]["event_id"])


def test_a_row_without_a_hash_is_named(journal: Journal, drive: Drive) -> None:
    """A hash set to NULL."""
    rows = _filled(journal, drive)
    _sql(journal, "UPDATE events SET chain = NULL WHERE seq = :seq", seq=rows[2]["seq"])
    assert _broken(journal)[:2] == (rows[2]["seq"], NO_HASH)


def test_an_anchor_catches_a_cut_tail(journal: Journal, drive: Drive) -> None:
    """The newest event deleted leaves a chain that holds; the anchor kept before says."""
    _filled(journal, drive)
    anchor = journal.verify_chain().head
    drive(journal, "s4", SlotState.pending, agent_id="agent-4")
    assert journal.verify_chain(anchor=anchor).broken is None  # grown since: still holds
    _sql(journal, "DELETE FROM events WHERE seq = (SELECT max(seq) FROM events)")
    _sql(journal, "DELETE FROM slots WHERE slot_id = 's4'")
    assert journal.verify_chain().broken is None
    assert journal.verify_chain(anchor=anchor).broken is None  # the anchor is still in it
    _sql(journal, "UPDATE events SET summary = 'x' WHERE seq = (SELECT max(seq) FROM events)")
    report = journal.verify_chain(anchor="f" * 64)
    assert report.broken is not None
    assert report.broken.what.startswith(CONTENT)
    with journal.engine.begin() as conn:  # a rewrite of the whole tail from a point
        _rechain(conn, "host-a")
    assert journal.verify_chain().broken is None
    broken = journal.verify_chain(anchor=anchor).broken
    assert broken is not None
    assert broken.seq is None


def _rechain(conn: Connection, identifier: str) -> None:
    """What an attacker who knows the format does: every hash recomputed."""
    head = GENESIS
    stmt = events.select().where(events.c.identifier == identifier).order_by(events.c.seq)
    for row in list(conn.execute(stmt).mappings()):
        head = link(head, row)
        conn.execute(events.update().where(events.c.seq == row["seq"]).values(chain=head))


# -- random tampering --------------------------------------------------------------------


def test_any_single_edit_or_delete_is_caught_where_it_is(
    sqlite_journal: Journal, drive: Drive
) -> None:
    """Over random positions: an edit is named at its row, a deletion (but of the newest
    event, which needs an anchor) at the row after it."""
    rows = _filled(sqlite_journal, drive)
    outboxed = {r["seq"] for r in rows if r["state_to"] in ("in_progress", "paused")}
    outboxed |= {r["seq"] for r in rows if r["state_to"] in ("completed", "aborted")}

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(index=st.integers(0, len(rows) - 1), delete=st.booleans())
    def check(index: int, delete: bool) -> None:
        row = rows[index]
        with sqlite_journal.engine.connect() as conn:
            tx = conn.begin()
            try:
                if delete and row["seq"] not in outboxed:
                    conn.execute(text("DELETE FROM events WHERE seq = :s"), {"s": row["seq"]})
                    report = verify_chain(conn, "host-a")
                    if index == len(rows) - 1:
                        assert report.broken is None
                    else:
                        assert report.broken is not None
                        assert report.broken.seq == rows[index + 1]["seq"]
                        assert report.broken.what.startswith(GAP)
                else:
                    conn.execute(
                        text("UPDATE events SET reason = 'tampered' WHERE seq = :s"),
                        {"s": row["seq"]},
                    )
                    report = verify_chain(conn, "host-a")
                    assert report.broken is not None
                    assert (report.broken.seq, report.broken.what) == (row["seq"], CONTENT)
            finally:
                tx.rollback()

    check()
