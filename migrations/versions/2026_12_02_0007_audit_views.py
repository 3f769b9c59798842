"""Views for auditors: slot_timeline, slot_history with durations, outbox_status.

This file is the one source of the auditors' views (``docs/audit.md`` documents them):

- ``slot_timeline``: one row per event, with its actor and the seconds the slot spent in
  the state it left (``in_state_from_s``: since the slot's previous event).
- ``slot_history``: one row per slot attempt: its last state, when it was received,
  woken and ended, and the seconds it spent pending, dispatching, in progress and paused
  (``total_s`` from receive to end, ``NULL`` while the attempt has not ended).
- ``outbox_status``: one row per status update the backend must hear, with its fate
  (``pending``, ``delivered``, ``dead``) and the seconds it took to deliver.
- ``active_slots``: as before (revision 0001), its times now formatted like the rest.

Every time is text, ISO 8601 in UTC with a ``Z`` and milliseconds (truncated), the same on
SQLite (which stores naive UTC text) and PostgreSQL (``timestamptz``):
``2026-12-02T07:54:16.123Z``; such strings sort as the times do. Durations are seconds,
as floating-point numbers. The two dialects differ only in how a time is formatted and
how a time becomes microseconds (:func:`_iso`, :func:`_micros`); the rest is one text.

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-02 08:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from alembic import op

revision: str = "0007"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Dropped newest first on downgrade; slot_history and active_slots go back to 0001's.
_VIEWS = ("outbox_status", "slot_history", "slot_timeline", "active_slots")


def _iso(dialect: str, column: str) -> str:
    """``column`` (a stored time, or NULL) as ISO 8601 UTC text with milliseconds and Z."""
    if dialect == "postgresql":
        return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""
    # SQLite holds 'YYYY-MM-DD HH:MM:SS.ffffff' (naive UTC). strftime normalises the whole
    # seconds; the fraction is cut from the text (strftime's %f would round it, while
    # PostgreSQL's MS truncates), padded when a row was written without one.
    return (
        f"strftime('%Y-%m-%dT%H:%M:%S', {column}) || '.' || "
        f"substr(substr({column}, 21) || '000', 1, 3) || 'Z'"
    )


def _micros(dialect: str, column: str) -> str:
    """``column`` (a stored time, or NULL) as whole microseconds since 1970, exactly."""
    if dialect == "postgresql":
        return f"CAST(EXTRACT(EPOCH FROM {column}) * 1000000 AS BIGINT)"
    # Whole seconds by strftime('%s'), the microseconds cut from the text: SQLite's own
    # date arithmetic keeps only milliseconds.
    return (
        f"(CAST(strftime('%s', {column}) AS INTEGER) * 1000000"
        f" + CAST(substr(substr({column}, 21) || '000000', 1, 6) AS INTEGER))"
    )


def _seconds(dialect: str, micros: str) -> str:
    """A number of microseconds (an integer expression) as seconds, a float."""
    if dialect == "postgresql":
        return f"(CAST({micros} AS DOUBLE PRECISION) / 1000000)"
    return f"(({micros}) / 1000000.0)"


# Durations are differences of whole microseconds (each time parsed once per row) and
# sums of them, turned into seconds last: exact, and cheap on a million events.


def _timeline(dialect: str) -> str:
    iso, micros = partial(_iso, dialect), partial(_micros, dialect)
    return f"""
CREATE VIEW slot_timeline AS
SELECT seq, event_id, {iso("recorded_at")} AS recorded_at, identifier, slot_id, attempt,
       agent_id, kind, actor, state_from, state_to, summary, reason,
       {_seconds(dialect, "at_us - previous_us")} AS in_state_from_s
FROM (
    SELECT seq, event_id, recorded_at, identifier, slot_id, attempt, agent_id, kind, actor,
           state_from, state_to, summary, reason, {micros("recorded_at")} AS at_us,
           LAG({micros("recorded_at")}) OVER (PARTITION BY identifier, slot_id ORDER BY seq)
               AS previous_us
    FROM events
) timed
"""  # noqa: S608 (DDL from this file's constants; no input reaches it)


def _history(dialect: str) -> str:
    iso, micros = partial(_iso, dialect), partial(_micros, dialect)

    def time_in(states: str) -> str:
        spent = f"SUM(CASE WHEN state_from IN ({states}) THEN at_us - previous_us END)"
        return _seconds(dialect, f"COALESCE({spent}, 0)")

    ended = "MAX(CASE WHEN state_to IN ('completed', 'aborted') THEN recorded_at END)"
    live = "'pending', 'dispatching', 'in_progress', 'paused'"
    return f"""
CREATE VIEW slot_history AS
SELECT identifier, slot_id, attempt,
       MAX(CASE WHEN last_of_attempt = 1 THEN agent_id END) AS agent_id,
       MAX(CASE WHEN last_of_attempt = 1 THEN state_to END) AS state,
       {iso("MIN(CASE WHEN kind = 'receive' THEN recorded_at END)")} AS received_at,
       {iso("MIN(CASE WHEN kind = 'woke' THEN recorded_at END)")} AS started_at,
       {iso(ended)} AS ended_at,
       {iso("MAX(recorded_at)")} AS updated_at,
       MAX(CASE WHEN last_of_attempt = 1 THEN summary END) AS summary,
       MAX(CASE WHEN last_of_attempt = 1 THEN reason END) AS reason,
       COUNT(*) AS events,
       SUM(CASE WHEN kind = 'dispatch' THEN 1 ELSE 0 END) AS dispatches,
       {time_in("'pending'")} AS pending_s,
       {time_in("'dispatching'")} AS dispatching_s,
       {time_in("'in_progress'")} AS in_progress_s,
       {time_in("'paused'")} AS paused_s,
       CASE WHEN {ended} IS NOT NULL THEN {time_in(live)} END AS total_s
FROM (
    SELECT recorded_at, identifier, slot_id, attempt, agent_id, kind, state_from, state_to,
           summary, reason, {micros("recorded_at")} AS at_us,
           LAG({micros("recorded_at")}) OVER slot_order AS previous_us,
           -- One window for both: an attempt's last event is the one the next event of
           -- its slot (if any) does not share the attempt with.
           CASE WHEN LEAD(attempt) OVER slot_order = attempt THEN 0 ELSE 1 END
               AS last_of_attempt
    FROM events
    WINDOW slot_order AS (PARTITION BY identifier, slot_id ORDER BY seq)
) timed
GROUP BY identifier, slot_id, attempt
"""  # noqa: S608 (DDL from this file's constants; no input reaches it)


def _outbox(dialect: str) -> str:
    iso, micros = partial(_iso, dialect), partial(_micros, dialect)
    delivery = _seconds(dialect, f"{micros('o.delivered_at')} - {micros('o.occurred_at')}")
    return f"""
CREATE VIEW outbox_status AS
SELECT o.id, o.identifier, o.slot_id, o.attempt, e.agent_id, o.status, o.event_seq,
       o.idempotency_key,
       CASE WHEN o.delivered_at IS NOT NULL THEN 'delivered'
            WHEN o.dead_at IS NOT NULL THEN 'dead'
            ELSE 'pending' END AS fate,
       o.tries, {iso("o.occurred_at")} AS occurred_at, {iso("o.next_try_at")} AS next_try_at,
       {iso("o.delivered_at")} AS delivered_at, {iso("o.dead_at")} AS dead_at,
       {delivery} AS delivery_s,
       o.last_error, o.summary, o.reason
FROM outbox o
LEFT JOIN events e ON e.seq = o.event_seq
"""  # noqa: S608 (DDL from this file's constants; no input reaches it)


def _active(dialect: str) -> str:
    iso = partial(_iso, dialect)
    return f"""
CREATE VIEW active_slots AS
SELECT identifier, slot_id, agent_id, state, attempt, {iso("received_at")} AS received_at,
       {iso("started_at")} AS started_at, {iso("updated_at")} AS updated_at
FROM slots
WHERE state NOT IN ('completed', 'aborted')
"""  # noqa: S608 (DDL from this file's constants; no input reaches it)


# Frozen copies of revision 0001's views, for the downgrade.
_SLOT_HISTORY_0001 = """
CREATE VIEW slot_history AS
SELECT seq, recorded_at, identifier, slot_id, attempt, agent_id, kind, actor,
       state_from, state_to, summary, reason
FROM events
"""

_ACTIVE_SLOTS_0001 = """
CREATE VIEW active_slots AS
SELECT identifier, slot_id, agent_id, state, attempt, received_at, started_at, updated_at
FROM slots
WHERE state NOT IN ('completed', 'aborted')
"""


def upgrade() -> None:
    """Replace slot_history and active_slots; add slot_timeline and outbox_status."""
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW slot_history")
    op.execute("DROP VIEW active_slots")
    for build in (_active, _timeline, _history, _outbox):
        op.execute(build(dialect))


def downgrade() -> None:
    """Back to revision 0001's two views."""
    for name in _VIEWS:
        op.execute(f"DROP VIEW {name}")
    op.execute(_SLOT_HISTORY_0001)
    op.execute(_ACTIVE_SLOTS_0001)
