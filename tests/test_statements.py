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
        sql.current_of_agent,
        sql.insert_event,
        sql.insert_outbox,
        sql.insert_slot,
        sql.update_slot,
        sql.update_slot_state,
        *sql.mark.values(),
    ]
    for c in compiled:
        assert len(c.names) == len(set(c.names)) == len(c.binders)
        assert c.positional is (journal.engine.dialect.paramstyle == "qmark")
    assert sql.insert_event.returns is (journal.engine.dialect.name != "sqlite")
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
