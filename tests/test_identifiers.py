"""calsched.journal.identifiers: the identifiers a database holds, and the refusal of a
defaulted new identifier beside live slots of others (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from calsched.errors import ConfigError
from calsched.journal import Journal
from calsched.journal.identifiers import (
    IdentifierUse,
    check_new_identifier,
    describe_identifiers,
    identifiers_in,
)
from calsched.journal.lease import Lease
from calsched.model import SlotState, SlotView

Drive = Callable[..., SlotView]


def test_identifiers_in_counts_slots_and_leases(
    open_journal: Callable[..., Journal], drive: Drive
) -> None:
    """Slots per identifier (live and all) and whether it ran (holds a lease row)."""
    old = open_journal("old-host")
    drive(old, "s1", SlotState.in_progress, agent_id="a1")
    drive(old, "s2", SlotState.completed, agent_id="a2")
    lease = Lease.guarded(old.engine, "ran-only", ttl_s=5)
    lease.acquire()
    lease.release()
    assert identifiers_in(old.engine) == [
        IdentifierUse("old-host", ran=False, slots=2, active=1),
        IdentifierUse("ran-only", ran=True, slots=0, active=0),
    ]


def test_a_new_defaulted_identifier_beside_live_slots_is_refused(
    open_journal: Callable[..., Journal], drive: Drive
) -> None:
    """The one line names the identifiers found and both ways out."""
    old = open_journal("old-host")
    drive(old, "s1", SlotState.in_progress)
    with pytest.raises(ConfigError) as caught:
        check_new_identifier(old.engine, "new-host", why="the host name")
    line = str(caught.value)
    assert "\n" not in line
    assert "'new-host' (the host name) is new to this database" in line
    assert "'old-host' (1 slot, 1 active)" in line
    assert "--identifier old-host" in line
    assert "--identifier new-host" in line


def test_a_known_identifier_or_no_live_slots_passes(
    open_journal: Callable[..., Journal], drive: Drive
) -> None:
    """Hosts sharing a database keep their own; ended slots of others stop nobody."""
    old = open_journal("old-host")
    drive(old, "s1", SlotState.completed)
    check_new_identifier(old.engine, "new-host", why="the host name")  # nothing live
    drive(old, "s2", SlotState.paused, agent_id="a2")
    check_new_identifier(old.engine, "old-host", why="the host name")  # its own
    lease = Lease.guarded(old.engine, "new-host", ttl_s=5)
    lease.acquire()  # new-host ran here before: it is known
    lease.release()
    check_new_identifier(old.engine, "new-host", why="the host name")


def test_describe_identifiers() -> None:
    """The phrase read commands print when they match nothing."""
    uses = [IdentifierUse("a", True, 3, 0), IdentifierUse("b", True, 0, 0)]
    assert describe_identifiers(uses) == "'a' (3 slots, 0 active), 'b' (ran, no slots)"
    assert describe_identifiers([]) == "none"
