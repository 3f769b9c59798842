"""The database schema, as SQLAlchemy Core tables. Alembic migrations own the real DDL;
``tests/test_migrations.py`` proves these tables match what the migrations build.

Tables:

- ``events``: append-only journal, one row per fired trigger.
- ``slots``: projection, one row per (identifier, slot_id); a cache of the fold of events.
- ``outbox``: one row per state change the backend must hear, until it is acknowledged.
- ``leases``: one row per identifier: which process holds it, under which epoch (the
  fencing token every journal write checks), until when (:mod:`calsched.journal.lease`).
- ``idempotency_keys``: the first answer to each control API call an agent made with an
  ``Idempotency-Key``, written in the transaction of the change it answers
  (:mod:`calsched.journal.idempotency`).
- ``operator_actions``: what an operator did outside the slots' own triggers (an outbox
  row retried or discarded, a prune), by whom and why (:mod:`calsched.journal.dead_letters`,
  :mod:`calsched.journal.retention`).
- ``chain_checkpoints``: where a prune cut the hash chain of ``events``: per run of removed
  events, the chain hash of its last event, so the kept ones still verify
  (:mod:`calsched.journal.chain`, ``docs/integrity.md``).
- ``calendar_slots``/``calendar_receipts``: the embedded local calendar that the reference
  backend serves, kept in the same database so a quickstart needs one file.

The auditors' views (``slot_timeline``, ``slot_history``, ``outbox_status``,
``active_slots``) are SQL text in one place only, the migration that creates them
(``migrations/versions/*_0007_audit_views.py``); ``docs/audit.md`` describes them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.types import TypeDecorator

from calsched.model import MAX_ID_CHARS

__all__ = [
    "NAMING_CONVENTION",
    "UTCDateTime",
    "calendar_receipts",
    "calendar_slots",
    "chain_checkpoints",
    "events",
    "idempotency_keys",
    "leases",
    "metadata",
    "operator_actions",
    "outbox",
    "slots",
]

#: Constraint names are derived, never left to the database, so migrations can name them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

_STATES = "'pending','dispatching','in_progress','paused','completed','aborted'"
#: model.CURRENT_STATES, as SQL: the states of an agent's one current slot.
_CURRENT = "state IN ('dispatching', 'in_progress', 'paused')"

# SQLite's autoincrement needs INTEGER PRIMARY KEY; elsewhere a 64-bit sequence.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database.

    SQLite has no time zones: values are stored as naive UTC and come back tagged UTC.
    PostgreSQL stores ``timestamptz``. Either way Python code only sees aware UTC times.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalise to UTC (naive input is taken as UTC)."""
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Tag naive results as UTC."""
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


events = Table(
    "events",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("identifier", String(MAX_ID_CHARS), nullable=False),
    Column("slot_id", String(MAX_ID_CHARS), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("agent_id", String(MAX_ID_CHARS), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("actor", String(16), nullable=False),
    Column("state_from", String(16), nullable=True),
    Column("state_to", String(16), nullable=False),
    Column("summary", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Column("payload", JSON, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    #: SHA-256 (hex) over the identifier's previous chain hash and this row's canonical
    #: content (:mod:`calsched.journal.chain`); nullable in SQL only for the migration.
    Column("chain", String(64), nullable=True),
    CheckConstraint(f"state_to IN ({_STATES})", name="state_to"),
    CheckConstraint("attempt >= 1", name="attempt"),
    Index("ix_events_slot", "identifier", "slot_id", "seq"),
    Index("ix_events_recorded_at", "recorded_at"),
    # The identifier's newest event (the chain's head) in one probe, however many events
    # other identifiers wrote since.
    Index("ix_events_identifier", "identifier", "seq"),
)

slots = Table(
    "slots",
    metadata,
    Column("identifier", String(MAX_ID_CHARS), primary_key=True),
    Column("slot_id", String(MAX_ID_CHARS), primary_key=True),
    Column("agent_id", String(MAX_ID_CHARS), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("slot", JSON, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("resolved_at", UTCDateTime, nullable=True),
    Column("summary", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Column("last_seq", SeqType, nullable=False),
    CheckConstraint(f"state IN ({_STATES})", name="state"),
    Index("ix_slots_state", "identifier", "state"),
    Index("ix_slots_agent", "identifier", "agent_id", "state"),
    # Newest change first (history, the status page after a restart) without a sort.
    Index("ix_slots_recent", "identifier", "last_seq"),
    # One current slot per agent, enforced by the database too: two writers racing past
    # the journal's own check cannot both commit one (the loser gets AgentBusyError).
    Index(
        "uq_slots_current_agent",
        "identifier",
        "agent_id",
        unique=True,
        sqlite_where=text(_CURRENT),
        postgresql_where=text(_CURRENT),
    ),
)

leases = Table(
    "leases",
    metadata,
    Column("identifier", String(MAX_ID_CHARS), primary_key=True),
    #: The fencing token: grows by one with every acquisition, never goes back.
    Column("epoch", BigInteger, nullable=False),
    #: Random per process start: tells a restarted process on the same pid apart.
    Column("instance", String(32), nullable=False),
    Column("host", String(256), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("acquired_at", UTCDateTime, nullable=False),
    Column("renewed_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    #: Whether the holder also holds the OS death lock (so a free lock means it died).
    Column("locked", Boolean, nullable=False),
    CheckConstraint("epoch >= 1", name="epoch"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", SeqType, primary_key=True, autoincrement=True),
    Column("event_seq", SeqType, ForeignKey("events.seq"), nullable=False, unique=True),
    Column("idempotency_key", String(36), nullable=False),
    Column("identifier", String(MAX_ID_CHARS), nullable=False),
    Column("slot_id", String(MAX_ID_CHARS), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("summary", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("tries", Integer, nullable=False, default=0),
    Column("next_try_at", UTCDateTime, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("delivered_at", UTCDateTime, nullable=True),
    Column("dead_at", UTCDateTime, nullable=True),
    CheckConstraint("status IN ('in_progress','paused','completed','aborted')", name="status"),
    # The undelivered rows in id order: due_outbox reads them oldest first and stops at
    # its limit, so PostgreSQL never walks the primary key through delivered history.
    Index("ix_outbox_due", "identifier", "delivered_at", "dead_at", "id", "next_try_at"),
    Index("ix_outbox_slot", "identifier", "slot_id", "id"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("identifier", String(MAX_ID_CHARS), primary_key=True),
    Column("agent_id", String(MAX_ID_CHARS), primary_key=True),
    Column("key", String(256), primary_key=True),
    #: SHA-256 of what was asked (route, actor, body): a key reused for another call is refused.
    Column("fingerprint", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("body", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # Expiry deletes by age: without this index it would walk every key.
    Index("ix_idempotency_keys_created_at", "created_at"),
)

operator_actions = Table(
    "operator_actions",
    metadata,
    Column("id", SeqType, primary_key=True, autoincrement=True),
    Column("identifier", String(MAX_ID_CHARS), nullable=False),
    #: ``outbox_retry``, ``outbox_discard`` or ``journal_prune``.
    Column("action", String(32), nullable=False),
    Column("actor", String(16), nullable=False),
    Column("outbox_id", BigInteger, nullable=True),
    Column("slot_id", String(MAX_ID_CHARS), nullable=True),
    Column("reason", Text, nullable=True),
    Column("recorded_at", UTCDateTime, nullable=False),
    Index("ix_operator_actions_identifier", "identifier", "id"),
)

chain_checkpoints = Table(
    "chain_checkpoints",
    metadata,
    Column("id", SeqType, primary_key=True, autoincrement=True),
    Column("identifier", String(MAX_ID_CHARS), nullable=False),
    #: The run of removed events: the first and the last one's seq.
    Column("from_seq", BigInteger, nullable=False),
    Column("through_seq", BigInteger, nullable=False),
    #: The chain hash of the event ``through_seq``: the next kept event chains from it.
    Column("chain", String(64), nullable=False),
    Column("events_removed", Integer, nullable=False),
    Column("pruned_at", UTCDateTime, nullable=False),
    #: The export the removed events went to (its name and SHA-256), if any.
    Column("export_file", Text, nullable=True),
    Column("export_sha256", String(64), nullable=True),
    Index("ix_chain_checkpoints_identifier", "identifier", "through_seq"),
)

calendar_slots = Table(
    "calendar_slots",
    metadata,
    Column("id", String(MAX_ID_CHARS), primary_key=True),
    Column("agent_id", String(MAX_ID_CHARS), nullable=False),
    Column("title", Text, nullable=True),
    Column("prompt_text", Text, nullable=True),
    Column("fire_at", UTCDateTime, nullable=False),
    Column("wake_options", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("holder", String(MAX_ID_CHARS), nullable=True),
    Column("summary", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint(
        "status IN ('scheduled','fired','in_progress','paused','completed','aborted')",
        name="status",
    ),
    Index("ix_calendar_slots_due", "status", "fire_at"),
)

calendar_receipts = Table(
    "calendar_receipts",
    metadata,
    Column("idempotency_key", String(128), primary_key=True),
    Column("slot_id", String(MAX_ID_CHARS), nullable=False),
    Column("identifier", String(MAX_ID_CHARS), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("body", JSON, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
)
