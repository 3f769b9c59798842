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
from dataclasses import dataclass, field, fields
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Dialect,
    Integer,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.expression import ClauseElement
from sqlalchemy.types import DateTime, TypeDecorator, TypeEngine

from calsched.journal.engine import driver_execute, driver_executemany
from calsched.journal.replay import Change
from calsched.journal.schema import chain_checkpoints, events, outbox, slots

__all__ = [
    "HEAD_COLUMNS",
    "IN_SIZES",
    "MUTABLE_SLOT_COLUMNS",
    "Compiled",
    "Statements",
    "execute",
    "execute_many",
    "fetch_all",
    "padded",
]

Processor = Callable[[Any], Any] | None

#: Projection columns a transition may change (a Change's fields); receive rewrites the row.
MUTABLE_SLOT_COLUMNS = tuple(f.name for f in fields(Change))
_SLOT_COLUMNS = tuple(c.name for c in slots.columns)
HEAD_COLUMNS = ("state", "attempt", "agent_id", "started_at", "summary", "reason")
_EVENT_COLUMNS = tuple(c.name for c in events.columns if c.name != "seq")
_OUTBOX_COLUMNS = tuple(c.name for c in outbox.columns if c.name not in ("id",))

#: The lengths an ``IN (...)`` list is compiled for: a batch's keys are padded up to the
#: next one (repeating its last key), so four statements serve every batch size and a
#: lone transition does not bind 512 parameters. Longer batches go in chunks of the last.
IN_SIZES = (1, 8, 64, 512)


def padded(keys: Sequence[str]) -> list[list[str]]:
    """``keys`` in chunks of at most ``IN_SIZES[-1]``, each padded to an ``IN_SIZES``
    length by repeating its last key (a repeated key in ``IN`` matches nothing more)."""
    chunks: list[list[str]] = []
    step = IN_SIZES[-1]
    for start in range(0, len(keys), step):
        chunk = list(keys[start : start + step])
        size = next(n for n in IN_SIZES if n >= len(chunk))
        chunks.append(chunk + [chunk[-1]] * (size - len(chunk)))
    return chunks


@dataclass(frozen=True, slots=True)
class Compiled:
    """One statement's SQL for one dialect, and how to bind its parameters."""

    sql: str
    names: tuple[str, ...]
    binders: tuple[Processor, ...]
    positional: bool
    returns: bool = False
    #: The values in ``names`` order in one C call, and only the processors that exist:
    #: binding runs once per row of every batch, so its Python is kept to the minimum.
    _pick: Callable[[Mapping[str, Any]], tuple[Any, ...]] = field(init=False, repr=False)
    _procs: tuple[tuple[int, Callable[[Any], Any]], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = self.names
        pick: Callable[[Mapping[str, Any]], tuple[Any, ...]]
        if not names:
            pick = _no_values
        elif len(names) == 1:
            one = names[0]
            pick = lambda values: (values[one],)  # noqa: E731 (itemgetter of one is no tuple)
        else:
            pick = itemgetter(*names)
        object.__setattr__(self, "_pick", pick)
        procs = tuple((i, p) for i, p in enumerate(self.binders) if p is not None)
        object.__setattr__(self, "_procs", procs)

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The driver's parameters for ``values``, each through its type's processor."""
        picked = self._pick(values)
        if self._procs:
            out = list(picked)
            for i, proc in self._procs:
                out[i] = proc(out[i])
            picked = tuple(out)
        if self.positional:
            return picked
        return dict(zip(self.names, picked, strict=True))


def _no_values(values: Mapping[str, Any]) -> tuple[Any, ...]:
    return ()


def _compile(
    stmt: ClauseElement, dialect: Dialect, column_keys: Sequence[str] = (), *, returns: bool = False
) -> Compiled:
    compiled = stmt.compile(dialect=dialect, column_keys=list(column_keys) or None)
    assert isinstance(compiled, SQLCompiler)
    positional = bool(compiled.positional)
    names = tuple(compiled.positiontup or ()) if positional else tuple(compiled.binds)
    binders = tuple(_binder(compiled.binds[n].type, dialect) for n in names)
    return Compiled(compiled.string, names, binders, positional, returns)


def _binder(type_: TypeEngine[Any], dialect: Dialect) -> Processor:
    proc = type_.dialect_impl(dialect).bind_processor(dialect)
    if proc is None or not _is_time(type_):
        return proc
    # A batch's rows carry the same few times (its clock reading, mostly), each bound
    # several times a row: converting each distinct value once saves most of the work.
    # Times are immutable, and the last one is held, so identity is a safe test; the
    # pair is swapped in one assignment, so threads sharing it never mix two pairs.
    last: list[tuple[Any, Any]] = [(_NOTHING, None)]

    def bind(value: Any) -> Any:
        seen, out = last[0]
        if value is seen:
            return out
        out = proc(value)
        last[0] = (value, out)
        return out

    return bind


def _is_time(type_: TypeEngine[Any]) -> bool:
    impl = type_.impl_instance if isinstance(type_, TypeDecorator) else type_
    return isinstance(impl, DateTime)


_NOTHING = object()


def _readers(dialect: Dialect, cols: Sequence[Column[Any]]) -> tuple[Processor, ...]:
    return tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in cols)


class Statements:
    """The journal's write-path statements for one dialect, compiled on first use."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        #: SQLite: new seqs follow ``max(seq)``; elsewhere the column's own sequence gives them.
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
        #: The heads of many slots, by ``IN_SIZES`` length: ``slot_id`` then the head.
        self.select_heads = {
            n: _compile(
                select(slots.c.slot_id, *head)
                .where(
                    slots.c.identifier == key[0],
                    slots.c.slot_id.in_([bindparam(f"slot_{i}") for i in range(n)]),
                )
                .with_for_update(),
                dialect,
            )
            for n in IN_SIZES
        }
        #: The current slots of many agents, by ``IN_SIZES`` length: (agent, slot) rows.
        self.current_of_agents = {
            n: _compile(
                select(slots.c.agent_id, slots.c.slot_id).where(
                    slots.c.identifier == key[0],
                    slots.c.agent_id.in_([bindparam(f"agent_{i}") for i in range(n)]),
                    slots.c.state.in_([bindparam(f"current_{i}") for i in range(3)]),
                ),
                dialect,
            )
            for n in IN_SIZES
        }
        #: Events with the seqs :attr:`reserve_seqs` handed out: each event's chain hash
        #: covers its seq, so the seq is known before the insert, even for one event.
        self.insert_events = _compile(insert(events), dialect, ("seq", *_EVENT_COLUMNS))
        #: ``n`` new seqs for one transaction's events. SQLite: the highest so far (new
        #: ones follow it; the writer's ``BEGIN IMMEDIATE`` holds the only write lock, and
        #: without AUTOINCREMENT SQLite would pick exactly these). Elsewhere: the column's
        #: own sequence, so identifiers sharing the database never collide.
        if self.lastrowid:
            # A prune may have removed the newest rows: SQLite would hand their seqs out
            # again, before the chain's checkpoints. New seqs follow those too.
            newest = select(func.max(events.c.seq)).scalar_subquery()
            cut = select(func.max(chain_checkpoints.c.through_seq)).scalar_subquery()
            zero = literal_column("0", type_=Integer())
            self.reserve_seqs = _compile(
                select(func.max(func.coalesce(newest, zero), func.coalesce(cut, zero))), dialect
            )
        else:
            # The table's own constant names, inlined: no value of a caller's goes here.
            serial = func.pg_get_serial_sequence(
                literal_column(f"'{events.name}'"), literal_column(f"'{events.c.seq.name}'")
            )
            self.reserve_seqs = _compile(
                select(func.nextval(serial)).select_from(
                    func.generate_series(literal_column("1"), bindparam("n", type_=Integer))
                ),
                dialect,
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


def execute_many(conn: Connection, stmt: Compiled, rows: Sequence[Mapping[str, Any]]) -> None:
    """Execute ``stmt`` once per row of ``rows``, in one driver call (``executemany``;
    a lone row is a plain execute, which costs the driver less)."""
    if len(rows) == 1:
        execute(conn, stmt, rows[0])
    elif rows:
        driver_executemany(conn, stmt.sql, [stmt.params(values) for values in rows]).close()


def fetch_all(conn: Connection, stmt: Compiled, values: Mapping[str, Any]) -> list[Any]:
    """Execute a select and return every row as the driver gives it."""
    cursor = _run(conn, stmt, values)
    try:
        return list(cursor.fetchall())
    finally:
        cursor.close()
