"""Engine set-up: SQLite pragmas, ``BEGIN IMMEDIATE`` for writes, hidden parameters.

Every pooled SQLite connection gets WAL, the configured ``synchronous`` level, a busy
timeout and foreign keys in a ``connect`` listener. pysqlite's own transaction handling is
turned off so that SQLAlchemy's ``begin`` event can emit ``BEGIN IMMEDIATE`` on write
transactions: a deferred read-then-write transaction fails at once with "database is
locked" when another process writes, where an immediate one waits for the busy timeout.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    SQLAlchemyError,
    StatementError,
)

from calsched.errors import AgentBusyError, ConfigError, JournalError, JournalUnavailableError

__all__ = [
    "WRITE",
    "Synchronous",
    "after_commit",
    "classify",
    "create_private_file",
    "describe_error",
    "driver_execute",
    "driver_executemany",
    "make_engine",
    "reading",
    "writing",
]

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

#: Execution option that marks a connection's next transaction as a write.
WRITE = "calsched_write"


def make_engine(
    url: str,
    *,
    synchronous: Synchronous = "FULL",
    busy_timeout_ms: int = 5000,
    echo: bool = False,
) -> Engine:
    """Create an engine for ``url`` with calsched's safety settings.

    Raises :class:`ConfigError` for a URL SQLAlchemy cannot parse; the URL (which may hold
    a password) is not repeated in the message.
    """
    if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ConfigError(
            f"sqlite synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}"
        )
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("the database URL cannot be parsed") from None
    kwargs: dict[str, Any] = {"hide_parameters": True, "echo": echo}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        # The scheduler writes from its journal thread; readers may use other threads.
        kwargs["connect_args"] = {"check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **kwargs)
    except ImportError as exc:  # the URL's driver is not installed: say which, and how
        raise ConfigError(_missing_driver(parsed.get_backend_name(), exc)) from None
    except Exception as exc:  # a bad option: one clear line
        raise ConfigError(f"cannot use the database URL: {type(exc).__name__}") from None
    if sqlite:
        _configure_sqlite(
            engine, synchronous, busy_timeout_ms, memory=parsed.database in (None, "", ":memory:")
        )
    return engine


#: The extra of calsched that installs a database's driver, by SQLAlchemy backend name.
DRIVER_EXTRAS = {"postgresql": "postgres"}


def _missing_driver(backend: str, exc: ImportError) -> str:
    """The one line for a URL whose driver module cannot be imported."""
    module = (exc.name or "").split(".")[0] or "its driver"
    extra = DRIVER_EXTRAS.get(backend)
    if extra is None:
        return f"the database URL needs the {backend} driver {module}, which is not installed"
    install = f"pip install 'calsched[{extra}]'"
    if module != "psycopg":
        # calsched[postgres] installs psycopg 3: the URL must name it to use it.
        return (
            f"the database URL names the PostgreSQL driver {module}, which is not installed;"
            f" calsched's is psycopg: {install} and write postgresql+psycopg://..."
        )
    return f"the database URL needs the PostgreSQL driver psycopg: {install}"


def _configure_sqlite(
    engine: Engine, synchronous: str, busy_timeout_ms: int, *, memory: bool
) -> None:
    @event.listens_for(engine, "do_connect")
    def _create_private(_dialect: Any, _record: Any, cargs: Any, _cparams: Any) -> None:
        # SQLite would create a missing file 0666 minus the umask (0644 under 022), and
        # its -wal and -shm take the database file's mode: creating it 0600 here, just
        # before SQLite would, keeps all three private whatever the umask.
        if not memory and cargs:
            create_private_file(Path(cargs[0]))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event own BEGIN; pysqlite's implicit BEGIN is deferred.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        sql = "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN"
        # On the driver's cursor: through exec_driver_sql this statement alone cost a
        # quarter of a transition's Python time.
        driver_execute(conn, sql, ()).close()


def driver_execute(conn: Connection, sql: str, params: Any) -> Any:
    """Execute ``sql`` on the driver's own cursor of ``conn``; return the cursor.

    SQLAlchemy's cursor events still fire, so what hooks into the engine (echo, tracing,
    tests that make the k-th statement fail) sees these statements too; listeners get
    ``context=None``. A driver error becomes SQLAlchemy's (IntegrityError,
    OperationalError, ...) with the parameters hidden, and a lost connection is
    invalidated rather than reused.
    """
    return _driver_run(conn, sql, params, many=False)


def driver_executemany(conn: Connection, sql: str, rows: Sequence[Any]) -> Any:
    """:func:`driver_execute` for many parameter sets of one statement: one
    ``executemany`` (listeners see it once, with ``executemany=True``)."""
    return _driver_run(conn, sql, rows, many=True)


def _driver_run(conn: Connection, sql: str, params: Any, *, many: bool) -> Any:
    cursor = conn.connection.cursor()
    dispatch = conn.dispatch
    try:
        if dispatch.before_cursor_execute:
            for fn in dispatch.before_cursor_execute:
                fn(conn, cursor, sql, params, None, many)
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
        if dispatch.after_cursor_execute:
            for fn in dispatch.after_cursor_execute:
                fn(conn, cursor, sql, params, None, many)
    except conn.dialect.loaded_dbapi.Error as exc:
        cursor.close()
        raise _wrapped(conn, sql, params, exc) from exc
    except BaseException:
        cursor.close()
        raise
    return cursor


def _wrapped(conn: Connection, sql: str, params: Any, exc: Any) -> StatementError:
    dialect = conn.dialect
    lost = dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
    if lost:
        conn.invalidate(exc)
    error: StatementError = DBAPIError.instance(
        sql,
        params,  # never shown: hide_parameters
        exc,
        dialect.loaded_dbapi.Error,
        hide_parameters=True,
        connection_invalidated=lost,
        dialect=dialect,
    )
    return error


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (or its directory does not:
    SQLite then says so itself)."""
    if path.exists() or not path.parent.is_dir():
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:  # another process created it meanwhile: its mode stands
        return
    except OSError:  # an unwritable directory: SQLite's own error is the clearer one
        return
    try:
        os.fchmod(fd, 0o600)  # the umask can only take bits away; make the mode exact
    finally:
        os.close(fd)


#: SQLite result codes (the primary code: the low byte of the extended one).
_SQLITE_CAUSES = {
    5: "database is locked",  # SQLITE_BUSY
    6: "database is locked",  # SQLITE_LOCKED
    8: "database is read-only",  # SQLITE_READONLY
    10: "disk I/O error",  # SQLITE_IOERR
    13: "disk full",  # SQLITE_FULL
    14: "cannot open the database file",  # SQLITE_CANTOPEN
}
#: The same causes from the driver's sentence, for errors without a code (raised by
#: tests, or by older drivers).
_SQLITE_SENTENCES = {
    "database is locked": "database is locked",
    "database table is locked": "database is locked",
    "attempt to write a readonly database": "database is read-only",
    "disk I/O error": "disk I/O error",
    "database or disk is full": "disk full",
    "unable to open database file": "cannot open the database file",
}
#: PostgreSQL SQLSTATEs; class 08 (connection exception) and 57P0x (shutdown) too.
_PG_CAUSES = {
    "53100": "disk full",
    "53200": "out of memory",
    "53300": "too many connections",
    "58030": "disk I/O error",
    "55P03": "database is locked",
}
#: Below this much free space, a write error is taken for a full disk.
_LOW_SPACE_BYTES = 1 << 20


def classify(engine: Engine, exc: SQLAlchemyError) -> str | None:
    """The short cause of a passing database fault ("disk full", "disk I/O error", ...),
    or ``None`` when ``exc`` is something else (a constraint, a bug, corruption).

    A write that hits a full disk or a file-size limit often reaches SQLite as a failed
    write (SQLITE_IOERR, EFBIG) rather than SQLITE_FULL; such an I/O error is called
    "disk full" when the disk or the process's file-size limit has no room left.
    """
    orig = getattr(exc, "orig", None)
    if orig is None:
        return None
    if engine.dialect.name == "sqlite":
        code = getattr(orig, "sqlite_errorcode", None)
        first = str(orig).splitlines()[0] if str(orig) else ""
        cause = _SQLITE_CAUSES.get(code & 0xFF) if isinstance(code, int) else None
        cause = cause or _SQLITE_SENTENCES.get(first)
        if cause == "disk I/O error" and _out_of_space(engine.url.database):
            return "disk full"
        return cause
    state = str(getattr(orig, "sqlstate", None) or "")
    if state in _PG_CAUSES:
        return _PG_CAUSES[state]
    lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
    if lost or state.startswith(("08", "57P0")):
        return "database unreachable"
    return None


def _out_of_space(database: str | None) -> bool:
    """Whether the database's disk, or this process's file-size limit, has no room."""
    if not database or database == ":memory:":
        return False
    path = Path(database)
    try:
        disk = os.statvfs(path.parent)
        if disk.f_bavail * disk.f_frsize < _LOW_SPACE_BYTES:
            return True
        soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft == resource.RLIM_INFINITY:
            return False
        sizes = [p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists()]
        return max(sizes, default=0) + _LOW_SPACE_BYTES // 16 >= soft
    except OSError:
        return False


def _failure(engine: Engine, what: str, doing: str, exc: SQLAlchemyError) -> JournalError:
    """The journal error for ``exc``: unavailable (503) for a passing fault, else plain."""
    sentence = describe_error(exc)
    cause = classify(engine, exc)
    if cause is not None:
        return JournalUnavailableError(what, cause, sentence)
    return JournalError(f"{what} {doing} failed: {sentence}")


def describe_error(exc: SQLAlchemyError) -> str:
    """The driver's own first line for ``exc``: never the statement or its parameters."""
    orig = getattr(exc, "orig", None)
    return str(orig).splitlines()[0] if orig is not None else type(exc).__name__


#: The unique index that keeps one current slot per agent (schema.py), as each database
#: names it in its error: PostgreSQL by the index, SQLite by its columns.
_CURRENT_AGENT = ("uq_slots_current_agent", "slots.identifier, slots.agent_id")


_AFTER_COMMIT = "calsched.after_commit"


def after_commit(conn: Connection, hook: Callable[[], None]) -> bool:
    """Run ``hook`` once the write transaction ``conn`` is in has committed (never if it
    rolls back or its commit fails). ``False`` when ``conn``'s transaction was not opened
    by :func:`writing`: then nobody will say, and the caller must not count on it."""
    hooks = conn.info.get(_AFTER_COMMIT)
    if hooks is None:
        return False
    hooks.append(hook)
    return True


@contextmanager
def writing(
    engine: Engine, what: str, *, check: Callable[[Connection], None] | None = None
) -> Iterator[Connection]:
    """A write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on success.

    ``check`` runs first inside the transaction (the journal's lease fence: whatever it
    raises rolls the transaction back and reaches the caller as it is). Database errors
    become :class:`JournalError` naming ``what`` ("journal", "calendar") and the driver's
    sentence, never the parameters; a passing fault (a full disk, an I/O error, a lock) is
    a :class:`JournalUnavailableError` naming its cause; a second current slot for one
    agent, refused by the database's unique index after another writer's commit, is
    :class:`AgentBusyError`.
    """
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(**{WRITE: True})
            hooks: list[Callable[[], None]] = []
            conn.info[_AFTER_COMMIT] = hooks
            try:
                with conn.begin():
                    if check is not None:
                        check(conn)
                    yield conn
            finally:
                # The pooled connection's info outlives this checkout: leave nothing behind.
                conn.info.pop(_AFTER_COMMIT, None)
            for hook in hooks:  # only once the commit returned: the rows are durable
                hook()
    except IntegrityError as exc:
        said = describe_error(exc)
        if any(name in said for name in _CURRENT_AGENT):
            raise AgentBusyError.raced() from None
        raise JournalError(f"{what} write conflicted: {said}") from None
    except SQLAlchemyError as exc:
        raise _failure(engine, what, "write", exc) from None


@contextmanager
def reading(engine: Engine, what: str) -> Iterator[Connection]:
    """A connection for reads; database errors become :class:`JournalError` (a passing
    fault a :class:`JournalUnavailableError`)."""
    try:
        with engine.connect() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise _failure(engine, what, "read", exc) from None
