"""Statements compiled once and run on the driver cursor, on every database (``db_url``)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError

from calsched.journal import Journal, TransitionRequest
from calsched.journal import statements as st
from calsched.journal.engine import driver_execute
from calsched.model import Actor, Slot, Trigger, utcnow


def _receive(journal: Journal, slot_id: str) -> None:
    slot = Slot(id=slot_id, agent_id="a", title="t")
    journal.apply(TransitionRequest(slot_id, Trigger.receive, Actor.scheduler, slot=slot))


def test_every_statement_binds_what_its_columns_need(journal: Journal) -> None:
    """Each compiled statement names its parameters once, in the dialect's style."""
    sql = st.Statements(journal.engine.dialect)
    compiled = [
        sql.select_head,
        *sql.select_heads.values(),
        *sql.current_of_agents.values(),
        sql.insert_events,
        sql.reserve_seqs,
        sql.insert_outbox,
        sql.insert_slot,
        sql.update_slot,
        sql.update_slot_state,
        *sql.mark.values(),
    ]
    for c in compiled:
        assert len(c.names) == len(set(c.names)) == len(c.binders)
        assert c.positional is (journal.engine.dialect.paramstyle == "qmark")
    assert "FOR UPDATE" in sql.select_head.sql.upper() or journal.engine.dialect.name == "sqlite"


def test_cursor_events_fire_for_the_hot_path(journal: Journal) -> None:
    """Listeners on the engine see the statements the driver cursor runs, in order."""
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.split()[0].upper())

    event.listen(journal.engine, "before_cursor_execute", before)
    try:
        _receive(journal, "s1")
    finally:
        event.remove(journal.engine, "before_cursor_execute", before)
    assert seen[-3:] == ["SELECT", "INSERT", "INSERT"]  # head, event, slot


def test_padded_chunks_pad_to_the_compiled_in_sizes() -> None:
    """Keys go in chunks of at most the largest IN size, each padded with its last key."""
    assert st.padded([]) == []
    assert st.padded(["a"]) == [["a"]]
    assert st.padded(["a", "b"]) == [["a", "b"] + ["b"] * 6]
    keys = [f"k{i}" for i in range(600)]
    chunks = st.padded(keys)
    assert [len(c) for c in chunks] == [512, 512]
    assert chunks[0] == keys[:512]
    assert chunks[1][:88] == keys[512:]
    assert set(chunks[1][88:]) == {"k599"}


def test_execute_many_is_one_driver_call_seen_by_listeners(journal: Journal) -> None:
    """Many rows: one executemany, which listeners see once (``executemany=True``)."""
    sql = st.Statements(journal.engine.dialect)
    for slot_id in ("s1", "s2", "s3"):
        _receive(journal, slot_id)
    seen: list[tuple[str, bool]] = []

    def before(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        seen.append((statement.split()[0].upper(), many))

    rows = [
        {"row_id": row_id, "delivered_at": utcnow(), "last_error": None} for row_id in (1, 2, 3)
    ]
    event.listen(journal.engine, "before_cursor_execute", before)
    try:
        with journal.engine.connect() as conn, conn.begin():
            st.execute_many(conn, sql.mark["delivered_at"], rows)
            st.execute_many(conn, sql.mark["delivered_at"], rows[:1])
            st.execute_many(conn, sql.mark["delivered_at"], [])
    finally:
        event.remove(journal.engine, "before_cursor_execute", before)
    assert [s for s in seen if s[0] == "UPDATE"] == [("UPDATE", True), ("UPDATE", False)]


def test_a_time_binder_converts_each_distinct_value_once(journal: Journal) -> None:
    """The memo of a time parameter gives each value its own conversion, never another's."""
    sql = st.Statements(journal.engine.dialect)
    (bind,) = [
        b
        for n, b in zip(sql.insert_events.names, sql.insert_events.binders, strict=True)
        if "recorded" in n
    ]
    assert bind is not None
    first, second = utcnow(), utcnow().replace(year=2001)
    a = bind(first)
    assert bind(first) is a
    b = bind(second)
    assert b != a
    assert bind(second) is b
    assert bind(first) == a


def test_a_driver_error_is_sqlalchemys_with_parameters_hidden(journal: Journal) -> None:
    """A constraint the driver reports arrives as IntegrityError, values not shown."""
    sql = st.Statements(journal.engine.dialect)
    _receive(journal, "s1")
    row = {
        "identifier": journal.identifier,
        "slot_id": "s1",  # already there: the primary key refuses it
        "agent_id": "secret-agent-value",
        "state": "pending",
        "attempt": 1,
        "slot": {},
        "received_at": utcnow(),
        "started_at": None,
        "updated_at": utcnow(),
        "resolved_at": None,
        "summary": None,
        "reason": None,
        "last_seq": 1,
    }
    with journal.engine.connect() as conn, conn.begin(), pytest.raises(IntegrityError) as info:
        st.execute(conn, sql.insert_slot, row)
    assert "secret-agent-value" not in str(info.value)
    assert "parameters hidden" in str(info.value)


def test_driver_execute_returns_rows(journal: Journal) -> None:
    """driver_execute hands back the driver's cursor with the rows."""
    _receive(journal, "s1")
    with journal.engine.connect() as conn:
        cursor = driver_execute(conn, "SELECT count(*) FROM events", ())
        try:
            assert cursor.fetchone()[0] == 1
        finally:
            cursor.close()
        assert conn.execute(text("SELECT count(*) FROM slots")).scalar_one() == 1
