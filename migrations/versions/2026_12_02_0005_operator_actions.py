"""What operators did outside the slots' own triggers: the ``operator_actions`` table.

One row per outbox row an operator retried or discarded (``calsched outbox retry`` /
``discard``): the identifier, the action, the actor (``operator``), the outbox row and its
slot, the reason given, and when. A discarded row itself is marked settled (its
``delivered_at`` set beside its ``dead_at``) with the reason in ``last_error``; this
table says who did it. The identifier a database was run with needs no table: every
identifier that ran keeps its ``leases`` row.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 08:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies: a migration must not change when calsched/journal/schema.py does.
_TS = sa.DateTime(timezone=True)
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create ``operator_actions`` and its index."""
    op.create_table(
        "operator_actions",
        sa.Column("id", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("identifier", sa.String(256), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(16), nullable=False),
        sa.Column("outbox_id", sa.BigInteger, nullable=True),
        sa.Column("slot_id", sa.String(256), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("recorded_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_operator_actions"),
    )
    op.create_index("ix_operator_actions_identifier", "operator_actions", ["identifier", "id"])


def downgrade() -> None:
    """Drop it."""
    op.drop_index("ix_operator_actions_identifier", table_name="operator_actions")
    op.drop_table("operator_actions")
