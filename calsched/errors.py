"""The whole calsched exception tree, in one place.

::

    CalschedError
    ├── InvalidInputError (ValueError)        malformed wire input; names the bad field
    ├── ConfigError (ValueError)              bad settings or configuration file
    ├── InvalidTransitionError (RuntimeError) a trigger the slot's state does not allow
    ├── NoActiveSlotError (LookupError)       the agent has no current slot
    ├── StaleSlotError (RuntimeError)         a tool call named a slot that is not current
    ├── AgentBusyError (RuntimeError)         dispatch while the agent has a current slot
    ├── SlotNotFoundError (LookupError)       no such slot in the journal
    ├── OutboxRowNotFoundError (LookupError)  no such undelivered outbox row
    ├── WakeFailedError (RuntimeError)        the host did not accept a wake
    ├── JournalError (RuntimeError)           the database cannot be used
    │   ├── SchemaVersionError                the database schema is older or newer than the code
    │   ├── LeaseHeldError                    another live process holds the identifier's lease
    │   ├── LeaseLostError                    this process no longer holds it: writes refused
    │   └── JournalUnavailableError           a passing fault: disk full, I/O error, locked
    └── BackendError (RuntimeError)           a call to the calendar backend failed
        ├── BackendRefusedError               401/403: the API key is refused
        ├── BackendRejectedError              404/400/422: the backend cannot take the request
        ├── BackendConflictError              409: the backend holds another terminal status
        └── BackendUnavailableError           a passing fault: 408, 429, 5xx, network, timeout

Every error builds its sentence from its fields, so callers raise
``InvalidTransitionError(slot_id, state, trigger)`` and never format messages themselves.
No error ever carries a secret (API key, token) in its text.
"""

from __future__ import annotations

__all__ = [
    "AgentBusyError",
    "BackendConflictError",
    "BackendError",
    "BackendRefusedError",
    "BackendRejectedError",
    "BackendUnavailableError",
    "CalschedError",
    "ConfigError",
    "InvalidInputError",
    "InvalidTransitionError",
    "JournalError",
    "JournalUnavailableError",
    "LeaseHeldError",
    "LeaseLostError",
    "NoActiveSlotError",
    "OutboxRowNotFoundError",
    "SchemaVersionError",
    "SlotNotFoundError",
    "StaleSlotError",
    "WakeFailedError",
]


class CalschedError(Exception):
    """Base of every error calsched raises on purpose.

    Example: ``except CalschedError as exc: print(f"error: {exc}")``
    """


class InvalidInputError(CalschedError, ValueError):
    """Wire input failed validation; ``field`` names the first bad field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"invalid input: {field}: {problem}")


class ConfigError(CalschedError, ValueError):
    """The configuration (file, environment or flags) is not usable."""


class InvalidTransitionError(CalschedError, RuntimeError):
    """A trigger that the slot's current state does not allow; nothing was written."""

    def __init__(self, slot_id: str, state: str, trigger: str) -> None:
        self.slot_id = slot_id
        self.state = state
        self.trigger = trigger
        super().__init__(f"slot {slot_id!r} is {state}: {trigger!r} is not allowed from there")


class NoActiveSlotError(CalschedError, LookupError):
    """The agent has no current slot to act on."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        super().__init__(f"agent {agent_id!r} has no active slot")


class StaleSlotError(CalschedError, RuntimeError):
    """A tool call named a slot that is no longer the agent's current one (fencing)."""

    def __init__(self, agent_id: str, slot_id: str, current: str | None) -> None:
        self.agent_id = agent_id
        self.slot_id = slot_id
        self.current = current
        now = f"its current slot is {current!r}" if current else "it has no current slot"
        super().__init__(f"slot {slot_id!r} is not agent {agent_id!r}'s current slot; {now}")


class AgentBusyError(CalschedError, RuntimeError):
    """A dispatch for an agent that already has a current slot."""

    def __init__(self, agent_id: str, current: str) -> None:
        self.agent_id = agent_id
        self.current = current
        super().__init__(f"agent {agent_id!r} already has current slot {current!r}")

    @classmethod
    def raced(cls) -> AgentBusyError:
        """The database's unique index refused a second current slot that another
        writer committed first; its error names neither the agent nor the slot."""
        error = cls.__new__(cls)
        error.agent_id = "?"
        error.current = "?"
        CalschedError.__init__(
            error, "the agent already has a current slot (another writer committed it first)"
        )
        return error


class SlotNotFoundError(CalschedError, LookupError):
    """No slot by that id in the journal."""

    def __init__(self, slot_id: str) -> None:
        self.slot_id = slot_id
        super().__init__(f"no slot by the id of {slot_id!r} was found")


class OutboxRowNotFoundError(CalschedError, LookupError):
    """No outbox row by that id waits for delivery (none such, or already settled)."""

    def __init__(self, row_id: int, *, settled: bool = False) -> None:
        self.row_id = row_id
        self.settled = settled
        what = "was already delivered or discarded" if settled else "does not exist"
        super().__init__(f"outbox row {row_id} {what}")


class JournalError(CalschedError, RuntimeError):
    """The journal database cannot be used (unreachable, locked, corrupt)."""


class JournalUnavailableError(JournalError):
    """The journal cannot be written (or read) for a cause that may pass: a full disk,
    an I/O error, a lock held too long, an unreachable server.

    ``cause`` is the short name an operator acts on ("disk full"); ``detail`` the
    driver's own sentence. Nothing was committed by the operation that raised it.
    """

    def __init__(self, what: str, cause: str, detail: str) -> None:
        self.what = what
        self.cause = cause
        self.detail = detail
        super().__init__(f"{what} unavailable: {cause}")


class SchemaVersionError(JournalError):
    """The database schema is not the one this code expects."""

    def __init__(self, found: str | None, expected: str) -> None:
        self.found = found
        self.expected = expected
        if found is None:
            msg = (
                f"the database has no calsched schema; run `calsched db upgrade` (want {expected})"
            )
        else:
            msg = (
                f"the database schema is at revision {found}, this calsched expects {expected}; "
                "upgrade calsched or run `calsched db upgrade`"
            )
        super().__init__(msg)


class LeaseHeldError(JournalError):
    """Another live process holds the identifier's lease; ``since`` is RFC 3339 text."""

    def __init__(
        self, identifier: str, host: str, pid: int, since: str, epoch: int, hint: str = ""
    ) -> None:
        self.identifier = identifier
        self.host = host
        self.pid = pid
        self.since = since
        self.epoch = epoch
        self.hint = hint
        super().__init__(
            f"identifier {identifier!r} is held by host {host} pid {pid} since {since} "
            f"(epoch {epoch}){'; ' + hint if hint else ''}"
        )

    def with_hint(self, hint: str) -> LeaseHeldError:
        """The same refusal with what to do about it appended (``use --standby ...``)."""
        return LeaseHeldError(self.identifier, self.host, self.pid, self.since, self.epoch, hint)


class LeaseLostError(JournalError):
    """This process's lease epoch is no longer the identifier's current one (or its
    renewal failed): the write was refused and the process must step down."""

    def __init__(self, identifier: str, epoch: int, why: str) -> None:
        self.identifier = identifier
        self.epoch = epoch
        self.why = why
        super().__init__(f"lost the lease on identifier {identifier!r} (epoch {epoch}): {why}")


class BackendError(CalschedError, RuntimeError):
    """A call to the calendar backend failed."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class BackendRefusedError(BackendError):
    """The backend refused the API key (401/403)."""


class BackendRejectedError(BackendError):
    """The backend cannot take this request (404/400/422); retrying will not help."""


class BackendConflictError(BackendError):
    """409: the backend already holds another terminal status for the slot."""

    def __init__(self, message: str, *, status: str, reason: str | None) -> None:
        self.status = status
        self.reason = reason
        super().__init__(message, status_code=409)


class BackendUnavailableError(BackendError):
    """A passing fault (408, 429, 5xx, network error, timeout); worth retrying."""

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status_code=status_code)


class WakeFailedError(CalschedError, RuntimeError):
    """The host did not accept a wake; the slot is aborted with this cause."""

    def __init__(self, agent_id: str, cause: str) -> None:
        self.agent_id = agent_id
        self.cause = cause
        super().__init__(f"wake-agent failed: {cause}")
