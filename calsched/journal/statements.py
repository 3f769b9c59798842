"""Core statements compiled once per database, run on the driver's own cursor.

The journal's hot path fires a handful of statements per transition. Through
``Connection.execute`` each one pays for argument coercion, a cache-key lookup and an
execution context: about a millisecond of Python per transition, five times what the
database itself needs. Here each statement is a SQLAlchemy Core construct (so the SQL is
the dialect's own, casts and quoting included) compiled once, with the bind and result
processors of its columns' types fetched once; executing it is one driver call.

Every statement stays parameterised: values only ever travel as bound parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Dialect,
    bindparam,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.expression import ClauseElement

from calsched.journal.engine import driver_execute
from calsched.journal.replay import Change
from calsched.journal.schema import events, outbox, slots

__all__ = [
    "HEAD_COLUMNS",
    "MUTABLE_SLOT_COLUMNS",
    "Compiled",
    "Statements",
    "execute",
    "fetch_all",
    "insert_returning_id",
]

Processor = Callable[[Any], Any] | None

#: Projection columns a transition may change (a Change's fields); receive rewrites the row.
MUTABLE_SLOT_COLUMNS = tuple(f.name for f in fields(Change))
_SLOT_COLUMNS = tuple(c.name for c in slots.columns)
HEAD_COLUMNS = ("state", "attempt", "agent_id", "started_at", "summary", "reason")
_EVENT_COLUMNS = tuple(c.name for c in events.columns if c.name != "seq")
_OUTBOX_COLUMNS = tuple(c.name for c in outbox.columns if c.name not in ("id",))


@dataclass(frozen=True, slots=True)
class Compiled:
    """One statement's SQL for one dialect, and how to bind its parameters."""

    sql: str
    names: tuple[str, ...]
    binders: tuple[Processor, ...]
    positional: bool
    returns: bool = False

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The driver's parameters for ``values``, each through its type's processor."""
        out = [
            value if proc is None else proc(value)
            for proc, value in zip(self.binders, (values[n] for n in self.names), strict=True)
        ]
        if self.positional:
            return tuple(out)
        return dict(zip(self.names, out, strict=True))


def _compile(
    stmt: ClauseElement, dialect: Dialect, column_keys: Sequence[str] = (), *, returns: bool = False
) -> Compiled:
    compiled = stmt.compile(dialect=dialect, column_keys=list(column_keys) or None)
    assert isinstance(compiled, SQLCompiler)
    positional = bool(compiled.positional)
    names = tuple(compiled.positiontup or ()) if positional else tuple(compiled.binds)
    binders = tuple(
        compiled.binds[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names
    )
    return Compiled(compiled.string, names, binders, positional, returns)


def _readers(dialect: Dialect, cols: Sequence[Column[Any]]) -> tuple[Processor, ...]:
    return tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in cols)


class Statements:
    """The journal's write-path statements for one dialect, compiled on first use."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        #: SQLite hands out the new ``seq`` as ``lastrowid``; elsewhere ``RETURNING`` does.
        self.lastrowid = dialect.name == "sqlite"
        key: tuple[BindParameter[str], BindParameter[str]] = (
            bindparam("identifier"),
            bindparam("slot_id"),
        )
        #: What deciding and projecting a transition needs of its slot: never the
        #: stored slot itself, whose JSON would cost more to decode than the rest.
        head = [slots.c[n] for n in HEAD_COLUMNS]
        self.select_head = _compile(
            select(*head)
            .where(slots.c.identifier == key[0], slots.c.slot_id == key[1])
            .with_for_update(),
            dialect,
        )
        self.head_readers = _readers(dialect, head)
        self.current_of_agent = _compile(
            select(slots.c.slot_id).where(
                slots.c.identifier == key[0],
                slots.c.agent_id == bindparam("agent_id"),
                slots.c.state.in_([bindparam(f"current_{i}") for i in range(3)]),
                slots.c.slot_id != key[1],
            ),
            dialect,
        )
        event_insert = insert(events)
        if not self.lastrowid:
            event_insert = event_insert.returning(events.c.seq)
        self.insert_event = _compile(
            event_insert, dialect, _EVENT_COLUMNS, returns=not self.lastrowid
        )
        self.insert_outbox = _compile(insert(outbox), dialect, _OUTBOX_COLUMNS)
        self.insert_slot = _compile(insert(slots), dialect, _SLOT_COLUMNS)
        where = (
            slots.c.identifier == bindparam("k_identifier"),
            slots.c.slot_id == bindparam("k_slot_id"),
        )
        self.update_slot = _compile(
            update(slots)
            .where(*where)
            .values({n: bindparam(n) for n in _SLOT_COLUMNS if n not in ("identifier", "slot_id")}),
            dialect,
        )
        # One more try recorded with every outcome: tries counts the backend's answers.
        marked = update(outbox).where(outbox.c.id == bindparam("row_id"))
        tried = outbox.c.tries + literal_column("1")
        self.mark = {
            kind: _compile(
                marked.values(
                    {"tries": tried, kind: bindparam(kind), "last_error": bindparam("last_error")}
                ),
                dialect,
            )
            for kind in ("delivered_at", "next_try_at", "dead_at")
        }
        self.update_slot_state = _compile(
            update(slots).where(*where).values({n: bindparam(n) for n in MUTABLE_SLOT_COLUMNS}),
            dialect,
        )


def _run(conn: Connection, stmt: Compiled, values: Mapping[str, Any]) -> Any:
    return driver_execute(conn, stmt.sql, stmt.params(values))


def execute(conn: Connection, stmt: Compiled, values: Mapping[str, Any]) -> None:
    """Execute ``stmt`` with ``values`` on ``conn``'s driver cursor."""
    _run(conn, stmt, values).close()


def insert_returning_id(conn: Connection, stmt: Compiled, values: Mapping[str, Any]) -> int:
    """Execute an insert and return the new row's id (``lastrowid`` or ``RETURNING``)."""
    cursor = _run(conn, stmt, values)
    try:
        if stmt.returns:
            row = cursor.fetchone()
            assert row is not None, "an insert with RETURNING returns its row"
            return int(row[0])
        return int(cursor.lastrowid)
    finally:
        cursor.close()


def fetch_all(conn: Connection, stmt: Compiled, values: Mapping[str, Any]) -> list[Any]:
    """Execute a select and return every row as the driver gives it."""
    cursor = _run(conn, stmt, values)
    try:
        return list(cursor.fetchall())
    finally:
        cursor.close()
