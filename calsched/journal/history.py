"""The journal's past: what was active at a given moment, by folding the events up to it.

:func:`state_at` answers "which slots were live at ``at``, in which state, since when" for
one identifier. It never reads the ``slots`` projection (that is the present): it folds
the events recorded at or before ``at`` with :func:`calsched.journal.replay.project`, the
same rule the projection and the scheduler's live view are built by, so the answer is
the live view the scheduler held at that moment.

Two steps keep it cheap on a long journal: one grouped query finds each slot's last
event up to ``at`` and keeps the slots it left live (no row per event reaches Python);
then only those slots' events are folded, as typed events.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, Engine, func, select

from calsched.journal.engine import reading
from calsched.journal.replay import fold
from calsched.journal.rows import event_from_row
from calsched.journal.schema import events
from calsched.model import TERMINAL_STATES, SlotView

__all__ = ["state_at"]

_ENDED = sorted(s.value for s in TERMINAL_STATES)
#: Slot ids per IN list: within every driver's parameter limit.
_CHUNK = 500


def state_at(
    engine: Engine, identifier: str, at: datetime, *, agent_id: str | None = None
) -> list[SlotView]:
    """Every slot of ``identifier`` not yet completed or aborted at ``at``, oldest first.

    Each view is the fold of the slot's events recorded at or before ``at`` (in ``seq``
    order): its ``state``, ``attempt`` and ``updated_at`` (since when it is in that state)
    are what the live view said then. With ``agent_id``, only that agent's slots.
    Events pruned from the journal are gone: a moment before a prune's cut shows only
    what is left.
    """
    upto = (events.c.identifier == identifier, events.c.recorded_at <= at)
    # Each slot's last event up to ``at``, found in SQL (one grouped pass, no row per
    # event in Python); the slots it did not end are the ones to fold.
    last = (
        select(events.c.slot_id, func.max(events.c.seq).label("seq"))
        .where(*upto)
        .group_by(events.c.slot_id)
        .subquery()
    )
    live_ids = (
        select(events.c.slot_id)
        .join(last, events.c.seq == last.c.seq)
        .where(events.c.state_to.not_in(_ENDED))
    )
    if agent_id is not None:  # every event of a slot carries its agent
        live_ids = live_ids.where(events.c.agent_id == agent_id)
    with reading(engine, "journal") as conn:
        live = sorted(conn.execute(live_ids).scalars())
        views = _fold_slots(conn, live, upto)
    return sorted(views, key=lambda v: (v.received_at, v.slot_id))


def _fold_slots(
    conn: Connection, slot_ids: Sequence[str], upto: tuple[ColumnElement[bool], ...]
) -> list[SlotView]:
    out: list[SlotView] = []
    for start in range(0, len(slot_ids), _CHUNK):
        chunk = slot_ids[start : start + _CHUNK]
        stmt = select(events).where(*upto, events.c.slot_id.in_(chunk)).order_by(events.c.seq)
        out.extend(fold(event_from_row(row) for row in conn.execute(stmt).mappings()).values())
    return out
