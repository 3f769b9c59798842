"""Initial schema: events, slots, outbox, embedded calendar, audit views.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 23:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies: a migration must not change when calsched/journal/schema.py does.
_STATES = "'pending','dispatching','in_progress','paused','completed','aborted'"
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)
# Check constraints are named with op.f(): the target metadata's naming convention would
# otherwise prefix these full names again ("ck_events_ck_events_attempt").

_SLOT_HISTORY = """
CREATE VIEW slot_history AS
SELECT seq, recorded_at, identifier, slot_id, attempt, agent_id, kind, actor,
       state_from, state_to, summary, reason
FROM events
"""

_ACTIVE_SLOTS = """
CREATE VIEW active_slots AS
SELECT identifier, slot_id, agent_id, state, attempt, received_at, started_at, updated_at
FROM slots
WHERE state NOT IN ('completed', 'aborted')
"""


def upgrade() -> None:
    """Create every table and view of the first release."""
    op.create_table(
        "events",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("identifier", sa.String(256), nullable=False),
        sa.Column("slot_id", sa.String(256), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("agent_id", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(16), nullable=False),
        sa.Column("state_from", sa.String(16), nullable=True),
        sa.Column("state_to", sa.String(16), nullable=False),
        sa.Column("summary", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("recorded_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_events"),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
        sa.CheckConstraint(f"state_to IN ({_STATES})", name=op.f("ck_events_state_to")),
        sa.CheckConstraint("attempt >= 1", name=op.f("ck_events_attempt")),
    )
    op.create_index("ix_events_slot", "events", ["identifier", "slot_id", "seq"])
    op.create_index("ix_events_recorded_at", "events", ["recorded_at"])

    op.create_table(
        "slots",
        sa.Column("identifier", sa.String(256), nullable=False),
        sa.Column("slot_id", sa.String(256), nullable=False),
        sa.Column("agent_id", sa.String(256), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("slot", sa.JSON, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("resolved_at", _TS, nullable=True),
        sa.Column("summary", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("last_seq", _SEQ, nullable=False),
        sa.PrimaryKeyConstraint("identifier", "slot_id", name="pk_slots"),
        sa.CheckConstraint(f"state IN ({_STATES})", name=op.f("ck_slots_state")),
    )
    op.create_index("ix_slots_state", "slots", ["identifier", "state"])
    op.create_index("ix_slots_agent", "slots", ["identifier", "agent_id", "state"])

    op.create_table(
        "outbox",
        sa.Column("id", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("event_seq", _SEQ, nullable=False),
        sa.Column("idempotency_key", sa.String(36), nullable=False),
        sa.Column("identifier", sa.String(256), nullable=False),
        sa.Column("slot_id", sa.String(256), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("summary", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("occurred_at", _TS, nullable=False),
        sa.Column("tries", sa.Integer, nullable=False),
        sa.Column("next_try_at", _TS, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("delivered_at", _TS, nullable=True),
        sa.Column("dead_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.ForeignKeyConstraint(["event_seq"], ["events.seq"], name="fk_outbox_event_seq_events"),
        sa.UniqueConstraint("event_seq", name="uq_outbox_event_seq"),
        sa.CheckConstraint(
            "status IN ('in_progress','paused','completed','aborted')",
            name=op.f("ck_outbox_status"),
        ),
    )
    op.create_index(
        "ix_outbox_due", "outbox", ["identifier", "delivered_at", "dead_at", "next_try_at"]
    )
    op.create_index("ix_outbox_slot", "outbox", ["identifier", "slot_id", "id"])

    op.create_table(
        "calendar_slots",
        sa.Column("id", sa.String(256), nullable=False),
        sa.Column("agent_id", sa.String(256), nullable=False),
        sa.Column("title", sa.Text, nullable=True),
        sa.Column("prompt_text", sa.Text, nullable=True),
        sa.Column("fire_at", _TS, nullable=False),
        sa.Column("wake_options", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("holder", sa.String(256), nullable=True),
        sa.Column("summary", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_calendar_slots"),
        sa.CheckConstraint(
            "status IN ('scheduled','fired','in_progress','paused','completed','aborted')",
            name=op.f("ck_calendar_slots_status"),
        ),
    )
    op.create_index("ix_calendar_slots_due", "calendar_slots", ["status", "fire_at"])

    op.create_table(
        "calendar_receipts",
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("slot_id", sa.String(256), nullable=False),
        sa.Column("identifier", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("idempotency_key", name="pk_calendar_receipts"),
    )

    op.execute(_SLOT_HISTORY)
    op.execute(_ACTIVE_SLOTS)


def downgrade() -> None:
    """Drop everything the upgrade created."""
    op.execute("DROP VIEW active_slots")
    op.execute("DROP VIEW slot_history")
    op.drop_table("calendar_receipts")
    op.drop_index("ix_calendar_slots_due", table_name="calendar_slots")
    op.drop_table("calendar_slots")
    op.drop_index("ix_outbox_slot", table_name="outbox")
    op.drop_index("ix_outbox_due", table_name="outbox")
    op.drop_table("outbox")
    op.drop_index("ix_slots_agent", table_name="slots")
    op.drop_index("ix_slots_state", table_name="slots")
    op.drop_table("slots")
    op.drop_index("ix_events_recorded_at", table_name="events")
    op.drop_index("ix_events_slot", table_name="events")
    op.drop_table("events")
