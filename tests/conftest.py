"""Fixtures shared by every test module.

- ``db_url``: one test body run against a SQLite file and PostgreSQL (APScheduler style).
  PostgreSQL needs ``CALSCHED_TEST_PG_URL``; each test gets its own schema, dropped after.
- ``pg_schemas``: fresh PostgreSQL schemas on demand, for one empty database per
  hypothesis example (skips without ``CALSCHED_TEST_PG_URL``).
- ``sqlite_url``: a SQLite file only, for tests about SQLite itself or that must be fast.
- ``journal``: a migrated :class:`~calsched.journal.Journal` (identifier ``host-a``) on
  ``db_url``; ``open_journal`` opens more (other identifiers, a fake clock), all closed at
  teardown. ``sqlite_journal`` is the same on a SQLite file only.
- ``make_slot``, ``drive``, ``snapshot``, ``clock``: helpers to build slots, put a slot in a
  given state through valid journal transitions, and compare the tables before and after.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from calsched.journal import Journal, TransitionRequest
from calsched.journal.schema import events, metadata, outbox, slots
from calsched.model import Actor, Slot, SlotState, SlotView, Trigger, parse

if TYPE_CHECKING:
    from typer.testing import Result

PG_ENV = "CALSCHED_TEST_PG_URL"
PG_SKIP_REASON = f"{PG_ENV} not set: PostgreSQL tests skipped"

#: The shortest valid path (after ``receive``) from a new slot to each state.
PATHS: dict[SlotState, tuple[Trigger, ...]] = {
    SlotState.pending: (),
    SlotState.dispatching: (Trigger.dispatch,),
    SlotState.in_progress: (Trigger.dispatch, Trigger.woke),
    SlotState.paused: (Trigger.dispatch, Trigger.woke, Trigger.pause),
    SlotState.completed: (Trigger.dispatch, Trigger.woke, Trigger.complete),
    SlotState.aborted: (Trigger.abort,),
}

#: Who fires each trigger in ``drive`` (any actor is valid; these are the realistic ones).
ACTORS: dict[Trigger, Actor] = {
    Trigger.receive: Actor.backend,
    Trigger.dispatch: Actor.scheduler,
    Trigger.woke: Actor.scheduler,
    Trigger.wake_failed: Actor.scheduler,
    Trigger.pause: Actor.agent,
    Trigger.resume: Actor.agent,
    Trigger.complete: Actor.agent,
    Trigger.abort: Actor.agent,
    Trigger.reconcile: Actor.backend,
}


# -- retries -----------------------------------------------------------------------------


# -- databases ---------------------------------------------------------------------------


def _pg_admin_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(PG_SKIP_REASON)
    return url


@contextmanager
def pg_schema(admin_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose connections use a fresh schema, dropped (CASCADE) after."""
    schema = f"t_{uuid.uuid4().hex}"
    # Other helpers share the database: only ever create and drop our own schema.
    admin = create_engine(admin_url, poolclass=NullPool)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(admin_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            # A connection a test leaked inside a transaction would block the DROP forever;
            # fail after a while instead, naming the schema left behind.
            conn.execute(text("SET LOCAL lock_timeout = '15s'"))
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose connections use a fresh schema, dropped (CASCADE) after."""
    with pg_schema(_pg_admin_url()) as url:
        yield url


@pytest.fixture
def pg_schemas() -> Callable[[], AbstractContextManager[str]]:
    """Fresh PostgreSQL schemas on demand (``with pg_schemas() as url``), each dropped
    after: for a test that needs many empty databases, one per hypothesis example."""
    return partial(pg_schema, _pg_admin_url())


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file URL in the test's own temporary directory."""
    return f"sqlite:///{tmp_path / 'journal.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A URL of an empty database: a SQLite file, or a private PostgreSQL schema."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


# -- journals ----------------------------------------------------------------------------


class FakeClock:
    """A clock that moves only when told; call it for the time."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 27, 22, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 1.0) -> datetime:
        """Move the clock forward and return the new time."""
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at 2026-11-27T22:00:00Z."""
    return FakeClock()


@pytest.fixture
def open_journal(db_url: str) -> Iterator[Callable[..., Journal]]:
    """Open journals on ``db_url`` (migrated); every one is closed at teardown."""
    opened: list[Journal] = []

    def _open(identifier: str = "host-a", *, url: str | None = None, **kwargs: Any) -> Journal:
        kwargs.setdefault("upgrade", True)
        journal = Journal.open(url or db_url, identifier, **kwargs)
        opened.append(journal)
        return journal

    yield _open
    for journal in opened:
        journal.close()


@pytest.fixture
def journal(open_journal: Callable[..., Journal]) -> Journal:
    """A migrated journal with identifier ``host-a`` on ``db_url``."""
    return open_journal("host-a")


@pytest.fixture
def sqlite_journal(sqlite_url: str) -> Iterator[Journal]:
    """A migrated journal (``host-a``) on a SQLite file only: for fast, SQLite-only tests."""
    journal = Journal.open(sqlite_url, "host-a", upgrade=True)
    yield journal
    journal.close()


# -- slots -------------------------------------------------------------------------------


def build_slot(slot_id: str = "s1", agent_id: str = "agent-1", **fields: Any) -> Slot:
    """A valid wire slot; ``fields`` override the defaults."""
    data: dict[str, Any] = {"id": slot_id, "agent_id": agent_id, "title": f"title of {slot_id}"}
    data.update(fields)
    return parse(Slot, data)


@pytest.fixture
def make_slot() -> Callable[..., Slot]:
    """Build a valid :class:`Slot`: ``make_slot("s1", "agent-1", title=...)``."""
    return build_slot


def request_for(
    slot_id: str,
    trigger: Trigger,
    *,
    agent_id: str = "agent-1",
    target: SlotState | None = None,
    **kwargs: Any,
) -> TransitionRequest:
    """A transition request with a realistic actor (and the slot, for ``receive``)."""
    if trigger is Trigger.receive and "slot" not in kwargs:
        kwargs["slot"] = build_slot(slot_id, agent_id)
    return TransitionRequest(
        slot_id=slot_id, trigger=trigger, actor=ACTORS[trigger], target=target, **kwargs
    )


def drive_slot(
    journal: Journal, slot_id: str, state: SlotState, *, agent_id: str = "agent-1"
) -> SlotView:
    """Receive ``slot_id`` (or a new attempt of it) and fire valid triggers up to ``state``."""
    for trigger in (Trigger.receive, *PATHS[state]):
        journal.apply(request_for(slot_id, trigger, agent_id=agent_id))
    view = journal.get(slot_id)
    assert view is not None
    assert view.state is state
    return view


@pytest.fixture
def drive() -> Callable[..., SlotView]:
    """``drive(journal, slot_id, state, agent_id=...)``: put a slot in ``state`` validly."""
    return drive_slot


@pytest.fixture
def request_factory() -> Callable[..., TransitionRequest]:
    """``request_factory(slot_id, trigger, agent_id=..., target=...)``: a request."""
    return request_for


def table_snapshot(journal: Journal) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``events``, ``slots`` and ``outbox`` (all identifiers), in key order."""
    with journal.engine.connect() as conn:
        return {
            "events": [tuple(r) for r in conn.execute(select(events).order_by(events.c.seq))],
            "slots": [
                tuple(r)
                for r in conn.execute(select(slots).order_by(slots.c.identifier, slots.c.slot_id))
            ],
            "outbox": [tuple(r) for r in conn.execute(select(outbox).order_by(outbox.c.id))],
        }


@pytest.fixture
def snapshot() -> Callable[[Journal], dict[str, list[tuple[Any, ...]]]]:
    """``snapshot(journal)``: every journal row, to prove a failed call changed nothing."""
    return table_snapshot


def count_rows(journal: Journal, table: str) -> int:
    """How many rows ``table`` holds, across identifiers."""
    with journal.engine.connect() as conn:
        query = select(func.count()).select_from(metadata.tables[table])
        return int(conn.execute(query).scalar_one())


@pytest.fixture
def row_count() -> Callable[[Journal, str], int]:
    """``row_count(journal, "events")``: rows in a journal table."""
    return count_rows


# -- an isolated CLI configuration --------------------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def isolate_cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database: str) -> Path:
    """A CLI test's configuration: none of the runner's ``CALSCHED_*`` (but the PostgreSQL
    URL), the XDG dirs, the SQLite file ``database`` and the secret file under
    ``tmp_path``, identifier host-a, and a free control port (not the default: ``token``
    and the outbox commands ask it whether a daemon runs there). Returns ``tmp_path``."""
    for name in list(os.environ):
        if name.startswith("CALSCHED_") and name != PG_ENV:
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("CALSCHED_DATABASE_URL", f"sqlite:///{tmp_path / database}")
    monkeypatch.setenv("CALSCHED_IDENTIFIER", "host-a")
    monkeypatch.setenv("CALSCHED_CONTROL__SECRET_FILE", str(tmp_path / "control.secret"))
    monkeypatch.setenv("CALSCHED_CONTROL__PORT", str(free_port()))
    return tmp_path


def cli(*args: str, code: int = 0) -> Result:
    """Run ``calsched *args`` in-process (typer's runner) and check its exit status."""
    from typer.testing import CliRunner

    from calsched.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    return result
