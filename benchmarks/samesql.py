"""The same SQL without calsched: capture a transition's statements, replay them raw.

A benchmark against "raw sqlite3" only says something if the raw side runs the statements
calsched runs. So nothing here is written by hand: :func:`capture` listens on the
journal's engine (SQLAlchemy's ``before_cursor_execute``) while the journal fires one
transition, and keeps each statement's text and its parameters as the driver got them.
:class:`Replay` runs those statements on a plain DB-API connection, one transaction per
transition, with the values that must differ per transition swapped for fresh ones: the
slot (and its agent) it touches, a new event id, and the ``seq`` the seq reservation gave
(the event's chain hash covers its seq, so the journal takes it before the insert).
When the journal's SQL changes, the comparison follows it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event

from calsched.journal import Journal, TransitionRequest
from calsched.journal.engine import make_engine
from calsched.model import Event

__all__ = ["Captured", "Replay", "capture", "raw_connection", "sqlite_pragmas"]

#: Names of the values swapped per transition.
SLOT, AGENT, EVENT_ID, SEQ = "slot", "agent", "event_id", "seq"


@dataclass(frozen=True)
class _Statement:
    sql: str
    params: Any  # a tuple (qmark, sqlite3) or a dict (pyformat, psycopg)
    swaps: tuple[tuple[Any, str], ...]  # (position or key, token)
    #: A seq reservation: the new seq is its first value plus this (SQLite's reads the
    #: highest seq so far: 1; PostgreSQL's ``nextval`` gives it: 0); ``None`` otherwise.
    reserves_seq: int | None


@dataclass(frozen=True)
class Captured:
    """One transition's statements, in order, ready to replay."""

    trigger: str
    statements: tuple[_Statement, ...]

    def describe(self) -> list[str]:
        """The first line of each statement, for a reader who wants to see them."""
        return [s.sql.split("\n")[0][:80] for s in self.statements]


@contextmanager
def _listening(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def _on_execute(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, many: bool
    ) -> None:
        assert not many, "a transition is single statements, not executemany"
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", _on_execute)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", _on_execute)


def _swaps(params: Any, tokens: Mapping[str, Any]) -> tuple[tuple[Any, str], ...]:
    by_value = {(type(v), v): name for name, v in tokens.items()}
    items = params.items() if isinstance(params, Mapping) else enumerate(params or ())
    return tuple(
        (where, by_value[(type(value), value)])
        for where, value in items
        if (type(value), value) in by_value
    )


def capture(journal: Journal, request: TransitionRequest) -> Captured:
    """Fire ``request`` through ``journal`` and keep the statements it sent."""
    view = journal.get(request.slot_id)
    assert view is not None, "capture a transition of a slot the journal has"
    with _listening(journal.engine) as seen:
        fired: Event = journal.apply(request)
    assert fired.seq is not None
    # A seq of 1 could be mistaken for an attempt or a count: capture on a bigger journal.
    assert fired.seq > 10, "capture on a journal with some history"
    tokens = {SLOT: view.slot_id, AGENT: view.agent_id, EVENT_ID: fired.event_id, SEQ: fired.seq}
    statements = []
    for sql, params in seen:
        swaps = _swaps(params, tokens)
        head = sql.lstrip().upper()
        reserves = None
        if "NEXTVAL" in head:
            reserves = 0
        elif head.startswith("SELECT MAX(COALESCE((SELECT MAX(EVENTS.SEQ)"):
            reserves = 1
        statements.append(_Statement(sql=sql, params=params, swaps=swaps, reserves_seq=reserves))
    swapped = {token for s in statements for _, token in s.swaps}
    assert swapped >= {SLOT, EVENT_ID, SEQ}, f"cannot follow the transition: {swapped}"
    return Captured(trigger=request.trigger.value, statements=tuple(statements))


class Replay:
    """Runs captured transitions on a raw DB-API connection, one transaction each.

    ``connection`` must be set up as calsched sets up its own (the same pragmas on
    SQLite); the SQLite connection runs with the driver's own transactions off, like the
    journal's, so the captured ``BEGIN IMMEDIATE`` is what opens each transaction.
    """

    def __init__(self, connection: Any, transitions: Sequence[Captured]) -> None:
        self.connection = connection
        self.cursor = connection.cursor()
        self.transitions = list(transitions)

    def run(self, index: int, slot_id: str, agent_id: str) -> None:
        """Replay transition ``index`` on ``slot_id`` and commit."""
        values: dict[str, Any] = {SLOT: slot_id, AGENT: agent_id, EVENT_ID: str(uuid.uuid4())}
        cur = self.cursor
        try:
            for statement in self.transitions[index].statements:
                params = _fill(statement, values)
                cur.execute(statement.sql, params)
                if cur.description is not None:
                    rows = cur.fetchall()
                    if statement.reserves_seq is not None:
                        values[SEQ] = int(rows[0][0] or 0) + statement.reserves_seq
            self.connection.commit()
        except BaseException:
            self.connection.rollback()
            raise

    def close(self) -> None:
        """Close the cursor and the connection."""
        self.cursor.close()
        self.connection.close()


def _fill(statement: _Statement, values: Mapping[str, Any]) -> Any:
    if not statement.swaps:
        return statement.params
    if isinstance(statement.params, Mapping):
        params: Any = dict(statement.params)
    else:
        params = list(statement.params)
    for where, token in statement.swaps:
        params[where] = values[token]
    return params


def sqlite_pragmas(connection: Any) -> dict[str, str]:
    """The durability-relevant pragmas a DB-API SQLite connection runs with."""
    cur = connection.cursor()
    try:
        out = {}
        for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout"):
            cur.execute(f"PRAGMA {name}")
            out[name] = str(cur.fetchone()[0]).lower()
        return out
    finally:
        cur.close()


def raw_connection(url: str) -> Any:
    """The driver's own connection, set up by calsched's engine code (pragmas, no BEGIN)."""
    engine = make_engine(url, synchronous="FULL")
    # Detach the DB-API connection from the pool: the replay owns it from here on.
    pooled = engine.raw_connection()
    driver = pooled.driver_connection
    pooled.detach()
    engine.dispose()
    return driver
