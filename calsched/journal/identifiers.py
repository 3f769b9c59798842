"""Which identifiers a journal database holds, and whether a new one may start on it.

The identifier defaults to the host name, so a renamed host (a new container) would start
on an identifier the database has never seen and silently recover nothing. Nothing new is
stored for this: every identifier that ever ran keeps its row in ``leases`` (a lease is
released, never deleted), and the ``slots`` projection says which ones hold live slots.
:func:`identifiers_in` reads both; :func:`check_new_identifier` is the daemon's refusal.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, case, func, inspect, select

from calsched.errors import ConfigError
from calsched.journal.engine import reading
from calsched.journal.schema import events, leases, slots
from calsched.model import ACTIVE_STATES

__all__ = [
    "IdentifierUse",
    "check_new_identifier",
    "describe_identifiers",
    "identifiers_in",
    "journal_size",
    "others_hint",
]

_ACTIVE = sorted(s.value for s in ACTIVE_STATES)


@dataclass(frozen=True, slots=True)
class IdentifierUse:
    """One identifier the database knows: whether it ran (holds a lease row), and how
    many slots it has, live and in all."""

    identifier: str
    ran: bool
    slots: int
    active: int


def identifiers_in(engine: Engine) -> list[IdentifierUse]:
    """Every identifier that ran on the database or has slots in it, by name.

    Empty for a database without the schema. One pass over the slots' primary key and
    one over the leases: meant for start-up and for a report that found nothing.
    """
    active = func.count(case((slots.c.state.in_(_ACTIVE), 1)))
    with reading(engine, "journal") as conn:
        if not inspect(conn).has_table("slots"):
            return []
        counts = {
            row.identifier: (int(row.total), int(row.active))
            for row in conn.execute(
                select(
                    slots.c.identifier, func.count().label("total"), active.label("active")
                ).group_by(slots.c.identifier)
            )
        }
        ran: set[str] = set()
        if inspect(conn).has_table("leases"):
            ran = set(conn.execute(select(leases.c.identifier)).scalars())
    names = sorted(set(counts) | ran)
    return [IdentifierUse(name, name in ran, *counts.get(name, (0, 0))) for name in names]


def _known(engine: Engine, identifier: str) -> bool:
    """Whether ``identifier`` ran on the database (a lease row) or has a slot there."""
    with reading(engine, "journal") as conn:
        if not inspect(conn).has_table("leases"):
            return False
        ran = conn.execute(select(leases.c.identifier).where(leases.c.identifier == identifier))
        if ran.first() is not None:
            return True
        mine = select(slots.c.slot_id).where(slots.c.identifier == identifier).limit(1)
        return conn.execute(mine).first() is not None


def describe_identifiers(uses: list[IdentifierUse]) -> str:
    """``'host-a' (3 slots, 1 active), 'host-b' (ran, no slots)``: for one line."""
    parts: list[str] = []
    for use in uses:
        if use.slots:
            what = f"{use.slots} slot{'s' if use.slots != 1 else ''}, {use.active} active"
        else:
            what = "ran, no slots"
        parts.append(f"{use.identifier!r} ({what})")
    return ", ".join(parts) if parts else "none"


def check_new_identifier(engine: Engine, identifier: str, *, why: str) -> None:
    """Refuse to start a defaulted ``identifier`` the database has never seen while other
    identifiers hold live slots in it: they would be left unrecovered without a word.

    ``why`` says where the identifier came from (``the host name``). An identifier that
    ran before (a lease row) or has slots is known and passes, so hosts sharing one
    database each keep their own. Raises :class:`~calsched.errors.ConfigError`.
    """
    if _known(engine, identifier):
        return  # every start after the first: two primary-key lookups, no scan
    others = [u for u in identifiers_in(engine) if u.active]
    if not others:
        return
    names = ", ".join(repr(u.identifier) for u in others)
    raise ConfigError(
        f"identifier {identifier!r} ({why}) is new to this database, which holds active "
        f"slots of {describe_identifiers(others)}; recover them with --identifier "
        f"{others[0].identifier} (or CALSCHED_IDENTIFIER), or start anew beside {names} "
        f"with --identifier {identifier}"
    )


def others_hint(engine: Engine, identifier: str) -> str:
    """For a report that found nothing: ``"; ... this database holds identifier 'x' (...)"``
    when ``identifier`` has no slots but others do (or ran), else ``""``.

    A database of another identifier (a renamed host) then says so instead of looking
    empty.
    """
    uses = identifiers_in(engine)
    if any(u.identifier == identifier and u.slots for u in uses):
        return ""  # the identifier has slots: a filter matched none, nothing to explain
    others = [u for u in uses if u.identifier != identifier]
    if not others:
        return ""
    plural = "s" if len(others) > 1 else ""
    return (
        f"; identifier {identifier!r} has none, but this database holds identifier{plural} "
        f"{describe_identifiers(others)} (--identifier to read them)"
    )


def journal_size(engine: Engine, identifier: str) -> tuple[int, int]:
    """How many slots and events ``identifier`` has (for ``journal verify``'s report)."""
    with reading(engine, "journal") as conn:
        slot_count = conn.execute(
            select(func.count()).select_from(slots).where(slots.c.identifier == identifier)
        ).scalar_one()
        event_count = conn.execute(
            select(func.count()).select_from(events).where(events.c.identifier == identifier)
        ).scalar_one()
    return int(slot_count), int(event_count)
