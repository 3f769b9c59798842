"""Safe retries of the agents' tools: the ``idempotency_keys`` table.

One row per (identifier, agent, ``Idempotency-Key``) the control API answered with a
change: the fingerprint of what was asked, and the answer (status and body) to give a
repeat. The row is written in the transaction of the change it answers, so the change and
the answer commit together or not at all; rows older than a day are deleted as new ones
are written.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 05:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies: a migration must not change when calsched/journal/schema.py does.
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create ``idempotency_keys`` and its expiry index."""
    op.create_table(
        "idempotency_keys",
        sa.Column("identifier", sa.String(256), nullable=False),
        sa.Column("agent_id", sa.String(256), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("identifier", "agent_id", "key", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    """Drop it."""
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
