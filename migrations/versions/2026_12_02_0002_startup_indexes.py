"""Start-up reads nothing proportional to history: an index for the newest slots.

``Journal.history(limit=...)`` (called by every start to fill the status page) ordered
every slot of the identifier by ``last_seq`` in a temporary B-tree; with this index it
reads the newest ``limit`` rows and stops.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 01:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Index the slots projection by identifier and newest change."""
    op.create_index("ix_slots_recent", "slots", ["identifier", "last_seq"])


def downgrade() -> None:
    """Drop the index."""
    op.drop_index("ix_slots_recent", table_name="slots")
