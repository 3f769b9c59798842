"""One holder per identifier: the ``leases`` table, and one current slot per agent.

- ``leases``: one row per identifier naming the process that holds it (host, pid, a
  random instance id), its epoch (the fencing token: it only grows, by one per
  acquisition), when it was acquired, last renewed and when it expires, and whether the
  holder also holds the OS-level death lock (a file lock beside a SQLite file, a session
  advisory lock on PostgreSQL).
- ``uq_slots_current_agent``: a partial unique index over (identifier, agent_id) for the
  current states (dispatching, in_progress, paused). The journal already refuses a second
  current slot in its decision pass; the index makes the database refuse it too, so two
  writers racing past that check cannot both commit one.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 04:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies: a migration must not change when calsched/journal/schema.py does.
_TS = sa.DateTime(timezone=True)
_CURRENT = "state IN ('dispatching', 'in_progress', 'paused')"


def upgrade() -> None:
    """Create ``leases`` and the one-current-slot-per-agent index."""
    op.create_table(
        "leases",
        sa.Column("identifier", sa.String(256), nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("instance", sa.String(32), nullable=False),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("acquired_at", _TS, nullable=False),
        sa.Column("renewed_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("locked", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("identifier", name="pk_leases"),
        sa.CheckConstraint("epoch >= 1", name=op.f("ck_leases_epoch")),
    )
    op.create_index(
        "uq_slots_current_agent",
        "slots",
        ["identifier", "agent_id"],
        unique=True,
        sqlite_where=sa.text(_CURRENT),
        postgresql_where=sa.text(_CURRENT),
    )


def downgrade() -> None:
    """Drop both."""
    op.drop_index("uq_slots_current_agent", table_name="slots")
    op.drop_table("leases")
