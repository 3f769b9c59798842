"""Start-up reads nothing proportional to history: two indexes.

- ``ix_slots_recent``: ``Journal.history(limit=...)`` (called by every start to fill the
  status page) sorted every slot of the identifier by ``last_seq``; with this index it
  reads the newest ``limit`` rows and stops.
- ``ix_outbox_due`` gains ``id`` after the undelivered/not-dead columns: due rows come out
  in id order, so with a backlog PostgreSQL no longer prefers walking the primary key
  (through every delivered row of the history) to find the oldest due ones.

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


_DUE_BEFORE = ["identifier", "delivered_at", "dead_at", "next_try_at"]
_DUE_AFTER = ["identifier", "delivered_at", "dead_at", "id", "next_try_at"]


def upgrade() -> None:
    """Index the newest slots; order the undelivered outbox rows by id."""
    op.create_index("ix_slots_recent", "slots", ["identifier", "last_seq"])
    op.drop_index("ix_outbox_due", table_name="outbox")
    op.create_index("ix_outbox_due", "outbox", _DUE_AFTER)


def downgrade() -> None:
    """Back to the first release's indexes."""
    op.drop_index("ix_outbox_due", table_name="outbox")
    op.create_index("ix_outbox_due", "outbox", _DUE_BEFORE)
    op.drop_index("ix_slots_recent", table_name="slots")
