"""Engine set-up: URL errors, SQLite pragmas, BEGIN IMMEDIATE for writes, busy waits."""

from __future__ import annotations

import os
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from calsched.errors import ConfigError, JournalError, JournalUnavailableError
from calsched.journal import Journal, TransitionRequest
from calsched.journal.engine import WRITE, make_engine, writing
from calsched.model import Actor, Slot, Trigger


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """Record every SQL statement the engine sends, in order."""
    seen: list[str] = []

    def listener(*args: Any) -> None:
        seen.append(" ".join(str(args[2]).split()))

    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listener)


@contextmanager
def engine_for(url: str, **kwargs: Any) -> Iterator[Engine]:
    """make_engine, disposed after."""
    engine = make_engine(url, **kwargs)
    try:
        yield engine
    finally:
        engine.dispose()


def _receive(slot_id: str) -> TransitionRequest:
    return TransitionRequest(
        slot_id, Trigger.receive, Actor.backend, slot=Slot(id=slot_id, agent_id="agent-1")
    )


@contextmanager
def write_lock_held(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's view: a plain sqlite3 connection holding the write lock."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


# -- URLs and options --------------------------------------------------------------------


def test_bad_synchronous_level_is_a_config_error() -> None:
    """synchronous must be one of SQLite's levels."""
    with pytest.raises(ConfigError, match="OFF, NORMAL, FULL or EXTRA"):
        make_engine("sqlite://", synchronous="SOMETIMES")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("://user:hunter2@nowhere", "the database URL cannot be parsed"),
        ("nosuchdb+nodriver://user:hunter2@host/db", "cannot use the database URL"),
    ],
    ids=["unparseable", "unknown-driver"],
)
def test_unusable_url_is_a_config_error_without_the_url(url: str, message: str) -> None:
    """A bad URL is one sentence that never repeats the URL (it may hold a password)."""
    with pytest.raises(ConfigError) as info:
        make_engine(url)
    assert str(info.value).startswith(message)
    assert "hunter2" not in str(info.value)
    assert info.value.__suppress_context__


@pytest.mark.parametrize(
    ("url", "module", "message"),
    [
        (
            "postgresql+psycopg://u:hunter2@127.0.0.1/db",
            "psycopg",
            "the database URL needs the PostgreSQL driver psycopg: "
            "pip install 'calsched[postgres]'",
        ),
        (
            "postgresql+psycopg2://u:hunter2@127.0.0.1/db",
            "psycopg2",
            "the database URL names the PostgreSQL driver psycopg2, which is not installed; "
            "calsched's is psycopg: pip install 'calsched[postgres]' and write "
            "postgresql+psycopg://...",
        ),
        (
            "mysql+pymysql://u:hunter2@127.0.0.1/db",
            "pymysql",
            "the database URL needs the mysql driver pymysql, which is not installed",
        ),
    ],
    ids=["psycopg", "psycopg2", "other"],
)
def test_a_missing_driver_is_named_with_what_installs_it(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, message: str
) -> None:
    """A URL whose driver is not installed names the driver and the extra to install."""
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    with pytest.raises(ConfigError) as info:
        make_engine(url)
    assert str(info.value) == message
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "url", ["sqlite://", "postgresql+psycopg://u:p@127.0.0.1/db"], ids=["sqlite", "postgres"]
)
def test_parameters_are_hidden_on_every_engine(url: str) -> None:
    """Row values never reach logs or error text: hide_parameters on every database."""
    with engine_for(url) as engine:
        assert engine.hide_parameters
        assert engine.pool._pre_ping is (engine.dialect.name != "sqlite")


# -- SQLite connections ------------------------------------------------------------------


def test_memory_database_skips_wal() -> None:
    """An in-memory database cannot use WAL; the other pragmas still apply."""
    names = ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
    with (
        engine_for("sqlite://", synchronous="NORMAL", busy_timeout_ms=77) as engine,
        engine.connect() as conn,
    ):
        pragmas = [conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in names]
    assert pragmas == ["memory", 1, 77, 1]


def test_pragmas_apply_to_every_pooled_connection(tmp_path: Path) -> None:
    """Each new connection of the pool gets the pragmas, not only the first."""
    with engine_for(f"sqlite:///{tmp_path / 'p.db'}", synchronous="OFF") as engine:
        first, second = engine.connect(), engine.connect()
        try:
            for conn in (first, second):
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 0
        finally:
            first.close()
            second.close()


def test_writes_begin_immediate_and_reads_begin_deferred(sqlite_journal: Journal) -> None:
    """Journal writes open with BEGIN IMMEDIATE; reads with a plain BEGIN."""
    with statements(sqlite_journal.engine) as seen:
        sqlite_journal.apply(_receive("s1"))
    assert seen[0] == "BEGIN IMMEDIATE"
    assert any(s.startswith("INSERT INTO events") for s in seen)
    with statements(sqlite_journal.engine) as seen:
        sqlite_journal.get("s1")
    assert seen[0] == "BEGIN"
    engine = sqlite_journal.engine
    with statements(engine) as seen, engine.connect() as conn:
        conn.execution_options(**{WRITE: True})
        with conn.begin():
            conn.execute(text("SELECT 1"))
    assert seen[0] == "BEGIN IMMEDIATE"


def test_locked_database_waits_busy_timeout_then_journal_error(sqlite_url: str) -> None:
    """A write waits for the busy timeout, then fails as JournalError; reads are not blocked."""
    journal = Journal.open(sqlite_url, "host-a", busy_timeout_ms=200, upgrade=True)
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    try:
        with write_lock_held(path):
            started = time.monotonic()
            with pytest.raises(JournalError) as info:
                journal.apply(_receive("s1"))
            waited = time.monotonic() - started
            assert journal.get("s1") is None  # WAL: readers do not wait for the writer
        assert str(info.value) == "journal unavailable: database is locked"
        assert waited >= 0.15
        assert journal.apply(_receive("s1")).seq == 1  # usable once the lock is gone
    finally:
        journal.close()


def test_write_waits_for_a_lock_released_in_time(sqlite_url: str) -> None:
    """Within the busy timeout a write waits for the other writer and then succeeds."""
    journal = Journal.open(sqlite_url, "host-a", upgrade=True)
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    try:
        with write_lock_held(path) as other:
            releaser = threading.Timer(0.2, lambda: other.execute("COMMIT"))
            releaser.start()
            try:
                started = time.monotonic()
                journal.apply(_receive("s1"))
                waited = time.monotonic() - started
            finally:
                releaser.join()
        assert waited >= 0.15
        assert [e.slot_id for e in journal.events()] == ["s1"]
    finally:
        journal.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_wal_and_shm_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Under umask 022 SQLite would make all three 0644: they are created 0600."""
    db = tmp_path / "j.db"
    old = os.umask(0o022)
    try:
        journal = Journal.open(f"sqlite:///{db}", "host-a", upgrade=True)
        try:
            with journal.engine.connect() as conn:  # the -wal and -shm exist while open
                conn.execute(text("SELECT 1"))
                found = {p.name: _mode(p) for p in tmp_path.iterdir()}
        finally:
            journal.close()
    finally:
        os.umask(old)
    assert found == {"j.db": 0o600, "j.db-wal": 0o600, "j.db-shm": 0o600}


def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    """Only a file calsched creates is made 0600; an operator's choice is not undone."""
    db = tmp_path / "j.db"
    Journal.open(f"sqlite:///{db}", "host-a", upgrade=True).close()
    db.chmod(0o640)
    Journal.open(f"sqlite:///{db}", "host-a", upgrade=True).close()
    assert _mode(db) == 0o640


def _failing(engine: Engine, error: Exception) -> None:
    @event.listens_for(engine, "before_cursor_execute")
    def _fail(*_args: Any) -> None:
        raise error


@pytest.mark.parametrize(
    ("sentence", "cause"),
    [
        ("database or disk is full", "disk full"),
        ("disk I/O error", "disk I/O error"),
        ("database is locked", "database is locked"),
        ("attempt to write a readonly database", "database is read-only"),
    ],
)
def test_passing_sqlite_faults_are_unavailable_naming_the_cause(
    sqlite_url: str, sentence: str, cause: str
) -> None:
    """The driver's sentence becomes a short cause; the sentence is kept as the detail."""
    engine = make_engine(sqlite_url)
    _failing(engine, sqlite3.OperationalError(sentence))
    try:
        with pytest.raises(JournalUnavailableError) as info, writing(engine, "journal") as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert str(info.value) == f"journal unavailable: {cause}"
    assert info.value.detail == sentence


def test_an_io_error_with_the_file_size_limit_reached_is_disk_full(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write past RLIMIT_FSIZE reaches SQLite as EFBIG, an I/O error: called disk full."""
    import resource

    engine = make_engine(sqlite_url)
    _failing(engine, sqlite3.OperationalError("disk I/O error"))
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (4096, resource.RLIM_INFINITY))
    try:
        with pytest.raises(JournalUnavailableError) as info, writing(engine, "journal") as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert info.value.cause == "disk full"


def test_other_database_errors_stay_plain_journal_errors(sqlite_url: str) -> None:
    """Corruption or a bug is not a passing fault: no 503, the plain message."""
    engine = make_engine(sqlite_url)
    _failing(engine, sqlite3.DatabaseError("database disk image is malformed"))
    try:
        with pytest.raises(JournalError) as info, writing(engine, "journal") as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert not isinstance(info.value, JournalUnavailableError)
    assert str(info.value) == "journal write failed: database disk image is malformed"


@pytest.mark.postgres
def test_postgres_disk_full_is_unavailable(pg_url: str) -> None:
    """SQLSTATE 53100 is a full disk on PostgreSQL too."""
    import psycopg.errors

    engine = make_engine(pg_url)
    _failing(engine, psycopg.errors.lookup("53100")("could not extend file"))
    try:
        with pytest.raises(JournalUnavailableError) as info, writing(engine, "journal") as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert info.value.cause == "disk full"
