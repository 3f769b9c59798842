"""Alembic migrations: one head, down-then-up with data, metadata == migrated schema.

The installed-wheel test starts pip, so it lives in tests/integration/test_wheel.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, func, inspect, select, text

from calsched.errors import JournalError, SchemaVersionError
from calsched.journal import Journal, migrate
from calsched.journal.engine import make_engine
from calsched.journal.schema import metadata
from calsched.model import SlotState, SlotView

REPO = Path(__file__).resolve().parent.parent
OUR_TABLES = {
    "events",
    "slots",
    "outbox",
    "leases",
    "idempotency_keys",
    "operator_actions",
    "chain_checkpoints",
    "calendar_slots",
    "calendar_receipts",
}
OUR_VIEWS = {"slot_timeline", "slot_history", "outbox_status", "active_slots"}
Drive = Callable[..., SlotView]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A calsched engine on the (empty) test database, disposed after."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _schema_differences(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, metadata))


def _constraint_names(conn: Connection) -> dict[str, set[str]]:
    """Every named constraint and index of our tables, as the database reports them."""
    inspector = inspect(conn)
    names: dict[str, set[str]] = {}
    for table in OUR_TABLES:
        found = {inspector.get_pk_constraint(table)["name"]}
        found |= {c["name"] for c in inspector.get_unique_constraints(table)}
        found |= {c["name"] for c in inspector.get_foreign_keys(table)}
        found |= {c["name"] for c in inspector.get_check_constraints(table)}
        # PostgreSQL may list a unique constraint's index too: same name, same set entry.
        found |= {i["name"] for i in inspector.get_indexes(table)}
        names[table] = found
    return names


def _metadata_names() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for table in metadata.sorted_tables:
        found = {str(c.name) for c in table.constraints}
        found |= {str(i.name) for i in table.indexes}
        names[table.name] = found
    return names


# -- the script directory ----------------------------------------------------------------


def test_single_head() -> None:
    """The migrations have exactly one head, and it is what the code expects."""
    script = ScriptDirectory.from_config(migrate.alembic_config())
    heads = script.get_heads()
    assert len(heads) == 1
    assert heads[0] == migrate.head_revision()
    # Start-up compares the database with this constant instead of loading the scripts.
    assert heads[0] == migrate.HEAD


def test_revision_files_are_dated() -> None:
    """Every revision file is named <year>_<month>_<day>_<rev>_<slug>.py."""
    script = ScriptDirectory.from_config(migrate.alembic_config())
    for revision in script.walk_revisions():
        assert revision.path is not None
        name = Path(revision.path).name
        assert re.fullmatch(rf"\d{{4}}_\d\d_\d\d_{revision.revision}_[a-z0-9_]+\.py", name), name


def test_migrations_path_finds_the_scripts() -> None:
    """In a checkout the scripts are the top-level migrations/ folder."""
    path = migrate.migrations_path()
    assert path == REPO / "migrations"
    assert (path / "env.py").is_file()
    assert any((path / "versions").glob("*.py"))
    assert migrate.alembic_config().get_main_option("script_location") == str(path)


def test_alembic_config_keeps_percent_signs_in_urls(engine: Engine) -> None:
    """A URL with %-escapes (PostgreSQL's options=-csearch_path%3D...) survives the config."""
    config = migrate.alembic_config(engine)
    assert config.get_main_option("sqlalchemy.url") == engine.url.render_as_string(
        hide_password=False
    )


# -- upgrade / downgrade -----------------------------------------------------------------


def test_upgrade_downgrade_upgrade_with_rows(engine: Engine, db_url: str, drive: Drive) -> None:
    """Rows in every journal table, downgrade to base, upgrade again: a working schema."""
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    head = migrate.head_revision()
    assert migrate.current_revision(engine) == head
    journal = Journal(engine, "host-a")
    drive(journal, "s1", SlotState.completed)  # events, slots and outbox rows
    drive(journal, "s2", SlotState.paused, agent_id="agent-2")
    with engine.connect() as conn:
        assert {t: _count(conn, t) for t in ("events", "slots", "outbox")} == {
            "events": 8,
            "slots": 2,
            "outbox": 4,
        }

    migrate.downgrade(engine, "base")
    assert migrate.current_revision(engine) is None
    with engine.connect() as conn:
        inspector = inspect(conn)
        assert not OUR_TABLES & set(inspector.get_table_names())
        assert not OUR_VIEWS & set(inspector.get_view_names())

    migrate.upgrade(engine)
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        assert versions == [head]
        assert _schema_differences(conn) == []
    reopened = Journal.open(db_url, "host-a")
    try:
        assert reopened.get("s1") is None  # base dropped the data, as documented
        drive(reopened, "s1", SlotState.in_progress)
        assert reopened.verify() == []
    finally:
        reopened.close()


def test_upgrade_from_the_first_release_keeps_rows(
    engine: Engine, db_url: str, drive: Drive
) -> None:
    """A journal taken down to 0001 with its rows upgrades to head with them, each event
    chained again exactly as the code chained it (0008), and goes back down."""
    migrate.upgrade(engine)
    drive(Journal(engine, "host-a"), "s1", SlotState.completed)
    drive(Journal(engine, "host-b"), "s2", SlotState.paused)
    drive(Journal(engine, "host-a"), "s3", SlotState.aborted, agent_id="agent-3")
    chained = _chains(engine)
    assert len(chained) == 10
    assert all(len(c) == 64 for _, _, c in chained)
    migrate.downgrade(engine, "0001")
    with engine.connect() as conn:
        assert "chain" not in {c["name"] for c in inspect(conn).get_columns("events")}
        assert "chain_checkpoints" not in inspect(conn).get_table_names()
    migrate.upgrade(engine)
    with engine.connect() as conn:
        assert _schema_differences(conn) == []
        assert "ix_slots_recent" in {i["name"] for i in inspect(conn).get_indexes("slots")}
    assert _chains(engine) == chained
    journal = Journal.open(db_url, "host-a")
    try:
        assert [v.slot_id for v in journal.history(limit=1)] == ["s3"]
        assert journal.verify() == []
        assert journal.verify_chain().broken is None
        drive(journal, "s4", SlotState.completed)  # appends chain from the migrated head
        assert journal.verify_chain().broken is None
    finally:
        journal.close()
    migrate.downgrade(engine, "0001")
    with engine.connect() as conn:
        assert "ix_slots_recent" not in {i["name"] for i in inspect(conn).get_indexes("slots")}
    assert migrate.current_revision(engine) == "0001"


def _chains(engine: Engine) -> list[tuple[int, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT seq, identifier, chain FROM events ORDER BY seq"))
        return [(int(seq), ident, chain) for seq, ident, chain in rows]


def _count(conn: Connection, table: str) -> int:
    query = select(func.count()).select_from(metadata.tables[table])
    return int(conn.execute(query).scalar_one())


def test_metadata_matches_migrated_schema(engine: Engine) -> None:
    """calsched.journal.schema.metadata describes exactly what the migrations build."""
    migrate.upgrade(engine)
    with engine.connect() as conn:
        assert _schema_differences(conn) == []
        # Alembic does not compare check constraints or names: compare every name here.
        assert _constraint_names(conn) == _metadata_names()


def test_views_exist_and_answer(journal: Journal, drive: Drive) -> None:
    """slot_timeline lists every event; slot_history every attempt; active_slots only
    live slots (tests/test_audit_views.py checks what each column says)."""
    drive(journal, "s1", SlotState.paused)
    drive(journal, "s2", SlotState.completed, agent_id="agent-2")
    with journal.engine.connect() as conn:
        assert set(inspect(conn).get_view_names()) >= OUR_VIEWS
        history = conn.execute(
            text("SELECT slot_id, kind, state_to FROM slot_timeline ORDER BY seq")
        ).all()
        attempts = conn.execute(
            text("SELECT slot_id, attempt, state FROM slot_history ORDER BY slot_id")
        ).all()
        active = conn.execute(text("SELECT slot_id, state, attempt FROM active_slots")).all()
    assert [tuple(r) for r in history] == [
        (e.slot_id, e.kind.value, e.state_to.value) for e in journal.events()
    ]
    assert [tuple(r) for r in attempts] == [("s1", 1, "paused"), ("s2", 1, "completed")]
    assert [tuple(r) for r in active] == [("s1", "paused", 1)]


# -- version checks ----------------------------------------------------------------------


def test_open_without_upgrade_on_empty_database(db_url: str) -> None:
    """An empty database is refused with a SchemaVersionError that says how to fix it."""
    with pytest.raises(SchemaVersionError) as info:
        Journal.open(db_url, "host-a")
    assert info.value.found is None
    assert info.value.expected == migrate.head_revision()
    assert "calsched db upgrade" in str(info.value)


def test_open_at_head_asks_alembic_nothing(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At head, opening (even with upgrade) is one read of alembic_version: no scripts."""
    migrate.upgrade(engine)

    def _forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("Alembic was consulted for a database already at head")

    for name in ("current_revision", "head_revision", "upgrade", "_upgrade_to", "check_known"):
        monkeypatch.setattr(migrate, name, _forbidden)
    for upgrade in (True, False):
        Journal.open(db_url, "host-a", upgrade=upgrade).close()


def test_older_revision_is_upgraded_or_refused(engine: Engine, db_url: str) -> None:
    """At an older known revision: refused without upgrade, migrated to head with it."""
    migrate.upgrade(engine, "0001")
    with pytest.raises(SchemaVersionError) as info:
        Journal.open(db_url, "host-a")
    assert (info.value.found, info.value.expected) == ("0001", migrate.head_revision())
    Journal.open(db_url, "host-a", upgrade=True).close()
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_unknown_newer_revision_is_refused(engine: Engine, db_url: str) -> None:
    """A database stamped by a newer calsched is refused, even with upgrade=True, untouched."""
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    for upgrade in (True, False):
        with pytest.raises(SchemaVersionError) as info:
            Journal.open(db_url, "host-a", upgrade=upgrade)
        assert (info.value.found, info.value.expected) == ("9999_future", migrate.head_revision())
    assert migrate.current_revision(engine) == "9999_future"
    with pytest.raises(SchemaVersionError):
        migrate.check_known("9999_future")
    migrate.check_known(migrate.head_revision())


def test_failed_migration_is_a_journal_error(engine: Engine, db_url: str) -> None:
    """A migration that cannot run (a foreign 'events' table) is a JournalError, rolled back."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE events (x INTEGER)"))
    with pytest.raises(JournalError) as info:
        Journal.open(db_url, "host-a", upgrade=True)
    assert not isinstance(info.value, SchemaVersionError)
    assert str(info.value).startswith("migration failed: ")
    assert migrate.current_revision(engine) is None


# -- the installed package ---------------------------------------------------------------
