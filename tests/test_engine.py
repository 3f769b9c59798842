"""Engine set-up: URL errors, SQLite pragmas, BEGIN IMMEDIATE for writes, busy waits."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from calsched.errors import ConfigError, JournalError
from calsched.journal import Journal, TransitionRequest
from calsched.journal.engine import WRITE, make_engine
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
