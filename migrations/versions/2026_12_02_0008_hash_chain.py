"""A hash chain over the events, and the checkpoints a prune leaves in it.

- ``events.chain``: SHA-256 (hex) over the identifier's previous chain hash and the row's
  canonical content (``calsched/journal/chain.py``; ``docs/integrity.md``). Nullable in
  SQL: the column is added before it is filled, and the code always writes it.
- ``ix_events_identifier`` (identifier, seq): the chain's head in one probe.
- ``chain_checkpoints``: per run of events a prune removed, the hash of its last event.

The upgrade computes the chain of every existing row, per identifier in seq order, in
batches of updates. It imports the hashing from calsched itself rather than a frozen
copy: the chain's format is defined once, so what this writes is exactly what ``journal
verify`` checks (a change of format would be a new migration recomputing the chain).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from calsched.journal.chain import GENESIS, link

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies: a migration must not change when calsched/journal/schema.py does.
_TS = sa.DateTime(timezone=True)
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_BATCH = 2000

_events = sa.table(
    "events",
    sa.column("seq", sa.BigInteger),
    sa.column("event_id", sa.String),
    sa.column("identifier", sa.String),
    sa.column("slot_id", sa.String),
    sa.column("attempt", sa.Integer),
    sa.column("agent_id", sa.String),
    sa.column("kind", sa.String),
    sa.column("actor", sa.String),
    sa.column("state_from", sa.String),
    sa.column("state_to", sa.String),
    sa.column("summary", sa.Text),
    sa.column("reason", sa.Text),
    sa.column("payload", sa.JSON),
    sa.column("recorded_at", _TS),
    sa.column("chain", sa.String),
)


def upgrade() -> None:
    """Add the column, its index and the checkpoints table; chain the existing rows."""
    op.add_column("events", sa.Column("chain", sa.String(64), nullable=True))
    op.create_index("ix_events_identifier", "events", ["identifier", "seq"])
    op.create_table(
        "chain_checkpoints",
        sa.Column("id", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("identifier", sa.String(256), nullable=False),
        sa.Column("from_seq", sa.BigInteger, nullable=False),
        sa.Column("through_seq", sa.BigInteger, nullable=False),
        sa.Column("chain", sa.String(64), nullable=False),
        sa.Column("events_removed", sa.Integer, nullable=False),
        sa.Column("pruned_at", _TS, nullable=False),
        sa.Column("export_file", sa.Text, nullable=True),
        sa.Column("export_sha256", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_chain_checkpoints"),
    )
    op.create_index(
        "ix_chain_checkpoints_identifier", "chain_checkpoints", ["identifier", "through_seq"]
    )
    _chain_existing(op.get_bind())


def _chain_existing(conn: sa.Connection) -> None:
    identifiers = conn.execute(sa.select(_events.c.identifier).distinct()).scalars().all()
    update = (
        sa.update(_events)
        .where(_events.c.seq == sa.bindparam("k_seq"))
        .values(chain=sa.bindparam("v_chain"))
    )
    for identifier in identifiers:
        head, after = GENESIS, 0
        while True:  # keyset batches: each read starts after the last seq chained
            rows = (
                conn.execute(
                    sa.select(_events)
                    .where(_events.c.identifier == identifier, _events.c.seq > after)
                    .order_by(_events.c.seq)
                    .limit(_BATCH)
                )
                .mappings()
                .all()
            )
            if not rows:
                break
            changes = []
            for row in rows:
                head = link(head, row)
                changes.append({"k_seq": row["seq"], "v_chain": head})
            conn.execute(update, changes)
            after = int(rows[-1]["seq"])


def downgrade() -> None:
    """Drop the checkpoints, the index and the column."""
    op.drop_index("ix_chain_checkpoints_identifier", table_name="chain_checkpoints")
    op.drop_table("chain_checkpoints")
    op.drop_index("ix_events_identifier", table_name="events")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite drops a column in place (3.35+); batch mode would copy the table, which
        # the audit views built on it would not survive.
        op.execute("ALTER TABLE events DROP COLUMN chain")
    else:
        op.drop_column("events", "chain")
