"""The exception tree: sentences built from fields, and the documented builtin bases."""

from __future__ import annotations

import inspect

import pytest

from calsched import errors
from calsched.errors import (
    AgentBusyError,
    BackendConflictError,
    BackendError,
    BackendRefusedError,
    BackendRejectedError,
    BackendUnavailableError,
    CalschedError,
    ConfigError,
    InvalidInputError,
    InvalidTransitionError,
    JournalError,
    JournalUnavailableError,
    LeaseHeldError,
    LeaseLostError,
    NoActiveSlotError,
    OutboxRowNotFoundError,
    SchemaVersionError,
    SlotNotFoundError,
    StaleSlotError,
    WakeFailedError,
)

# The tree as errors.py's docstring draws it: (error, its documented parent).
TREE: list[tuple[type[Exception], type[Exception]]] = [
    (InvalidInputError, ValueError),
    (ConfigError, ValueError),
    (InvalidTransitionError, RuntimeError),
    (NoActiveSlotError, LookupError),
    (StaleSlotError, RuntimeError),
    (AgentBusyError, RuntimeError),
    (SlotNotFoundError, LookupError),
    (OutboxRowNotFoundError, LookupError),
    (WakeFailedError, RuntimeError),
    (JournalError, RuntimeError),
    (SchemaVersionError, JournalError),
    (LeaseHeldError, JournalError),
    (LeaseLostError, JournalError),
    (JournalUnavailableError, JournalError),
    (BackendError, RuntimeError),
    (BackendRefusedError, BackendError),
    (BackendRejectedError, BackendError),
    (BackendConflictError, BackendError),
    (BackendUnavailableError, BackendError),
]


@pytest.mark.parametrize(("error", "parent"), TREE, ids=[e.__name__ for e, _ in TREE])
def test_error_subclasses_calsched_error_and_documented_builtin(
    error: type[Exception], parent: type[Exception]
) -> None:
    """Every error is a CalschedError and subclasses the builtin (or parent) it documents."""
    assert issubclass(error, CalschedError)
    assert issubclass(error, parent)


def test_all_lists_every_error_sorted() -> None:
    """__all__ is sorted and names every exception class the module defines."""
    defined = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == errors.__name__
    }
    assert errors.__all__ == sorted(errors.__all__)
    assert set(errors.__all__) == defined
    assert {e.__name__ for e, _ in TREE} | {"CalschedError"} == defined


def test_invalid_input_names_field_and_problem() -> None:
    """InvalidInputError keeps the field and problem and says both."""
    exc = InvalidInputError("slots_to_fire.0.id", "field required")
    assert (exc.field, exc.problem) == ("slots_to_fire.0.id", "field required")
    assert str(exc) == "invalid input: slots_to_fire.0.id: field required"


def test_invalid_transition_sentence_from_fields() -> None:
    """InvalidTransitionError(slot_id, state, trigger) carries and states all three."""
    exc = InvalidTransitionError("s-17", "completed", "pause")
    assert (exc.slot_id, exc.state, exc.trigger) == ("s-17", "completed", "pause")
    assert str(exc) == "slot 's-17' is completed: 'pause' is not allowed from there"


def test_no_active_slot_sentence() -> None:
    """NoActiveSlotError names the agent."""
    exc = NoActiveSlotError("alice")
    assert exc.agent_id == "alice"
    assert str(exc) == "agent 'alice' has no active slot"


@pytest.mark.parametrize(
    ("current", "tail"),
    [("s-2", "its current slot is 's-2'"), (None, "it has no current slot")],
)
def test_stale_slot_sentence_with_and_without_current(current: str | None, tail: str) -> None:
    """StaleSlotError says which slot is current, or that there is none."""
    exc = StaleSlotError("alice", "s-1", current)
    assert (exc.agent_id, exc.slot_id, exc.current) == ("alice", "s-1", current)
    assert str(exc) == f"slot 's-1' is not agent 'alice''s current slot; {tail}"


def test_agent_busy_sentence() -> None:
    """AgentBusyError names the agent and the slot it is busy with."""
    exc = AgentBusyError("bob", "s-9")
    assert (exc.agent_id, exc.current) == ("bob", "s-9")
    assert str(exc) == "agent 'bob' already has current slot 's-9'"


def test_slot_not_found_sentence() -> None:
    """SlotNotFoundError reads like APScheduler's lookup errors."""
    exc = SlotNotFoundError("s-404")
    assert exc.slot_id == "s-404"
    assert str(exc) == "no slot by the id of 's-404' was found"


def test_schema_version_error_for_empty_database() -> None:
    """With no revision found, SchemaVersionError tells the user to run the upgrade."""
    exc = SchemaVersionError(None, "0001")
    assert (exc.found, exc.expected) == (None, "0001")
    assert "no calsched schema" in str(exc)
    assert "calsched db upgrade" in str(exc)
    assert "0001" in str(exc)


def test_schema_version_error_for_other_revision() -> None:
    """With a revision found, SchemaVersionError names both revisions."""
    exc = SchemaVersionError("9999", "0001")
    assert "revision 9999" in str(exc)
    assert "expects 0001" in str(exc)


def test_backend_errors_carry_status_codes() -> None:
    """Backend errors keep the HTTP status; a conflict is always 409 with the held status."""
    assert BackendError("boom").status_code is None
    assert BackendRejectedError("gone", status_code=404).status_code == 404
    conflict = BackendConflictError("held", status="aborted", reason="cancelled")
    assert (conflict.status_code, conflict.status, conflict.reason) == (409, "aborted", "cancelled")
    assert str(conflict) == "held"
    unavailable = BackendUnavailableError("busy", status_code=429, retry_after=2.5)
    assert (unavailable.status_code, unavailable.retry_after) == (429, 2.5)
    assert BackendUnavailableError("timeout").retry_after is None


def test_wake_failed_sentence_is_the_seed_reason() -> None:
    """WakeFailedError's text is the abort reason the seed used: 'wake-agent failed: ...'."""
    exc = WakeFailedError("bob", "HTTP 503")
    assert (exc.agent_id, exc.cause) == ("bob", "HTTP 503")
    assert str(exc) == "wake-agent failed: HTTP 503"


def test_agent_busy_raced_names_no_slot() -> None:
    """The unique index's refusal: an AgentBusyError that does not pretend to know the slot."""
    err = AgentBusyError.raced()
    assert isinstance(err, AgentBusyError)
    assert str(err) == "the agent already has a current slot (another writer committed it first)"


def test_lease_held_sentence_names_the_holder() -> None:
    """One line: identifier, host, pid, since when, epoch."""
    err = LeaseHeldError("host-a", "web-1", 4242, "2026-12-02T03:00:00Z", 7)
    assert str(err) == (
        "identifier 'host-a' is held by host web-1 pid 4242 since 2026-12-02T03:00:00Z (epoch 7)"
    )
    assert (err.host, err.pid, err.epoch) == ("web-1", 4242, 7)


def test_lease_lost_sentence_says_why() -> None:
    """Names the identifier, the lost epoch and the reason."""
    err = LeaseLostError("host-a", 7, "epoch 8 took over")
    assert str(err) == "lost the lease on identifier 'host-a' (epoch 7): epoch 8 took over"


def test_journal_unavailable_names_its_cause_not_the_driver_sentence() -> None:
    """The message is the short cause an operator acts on; the driver's sentence is kept."""
    exc = JournalUnavailableError("journal", "disk full", "database or disk is full")
    assert str(exc) == "journal unavailable: disk full"
    assert (exc.what, exc.cause, exc.detail) == ("journal", "disk full", "database or disk is full")


def test_outbox_row_not_found_says_whether_it_was_settled() -> None:
    """OutboxRowNotFoundError names the row, and whether it is gone or already settled."""
    assert str(OutboxRowNotFoundError(7)) == "outbox row 7 does not exist"
    settled = OutboxRowNotFoundError(7, settled=True)
    assert (settled.row_id, settled.settled) == (7, True)
    assert str(settled) == "outbox row 7 was already delivered or discarded"
