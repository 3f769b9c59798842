"""calsched: a crash-tolerant calendar-slot scheduler for AI-agent hosts.

Slots move through an explicit state machine; every transition is appended to a SQL
journal before it takes effect, so a restart replays the active slots instead of losing
them.

This module is the public surface (``docs/embedding.md``): the names in :data:`__all__`
are what a host needs to build, run and stop a :class:`Scheduler` with its own
:class:`Host`, and they keep their meaning across minor versions. Everything else
(``calsched.journal.*``, ``calsched.scheduler.*``, ...) is internal and may change in any
release; :mod:`calsched.testing` is public too, as a module of its own. Example::

    async with calsched.Scheduler(settings, journal, backend, host) as scheduler: ...

The names are loaded on first use (PEP 562): ``import calsched.errors``, which every
``calsched`` command does first, does not import the scheduler, SQLAlchemy or HTTP.
"""

from __future__ import annotations

from calsched._lazy import lazy_getattr

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (about 9 ms)

if TYPE_CHECKING:
    from calsched._version import __version__
    from calsched.backend.calendar import LocalCalendar
    from calsched.backend.embedded import embedded_backend
    from calsched.backend.http import HttpBackend
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
    from calsched.journal.idempotency import ToolKey
    from calsched.journal.store import Journal
    from calsched.model import (
        Actor,
        AgentReport,
        AgentStatus,
        HeartbeatRequest,
        HeartbeatResponse,
        RejectedSlot,
        Slot,
        SlotState,
        SlotUpdate,
        SlotView,
        WakeOptions,
    )
    from calsched.ports import Backend, Host, SlotTools, WakeRequest
    from calsched.scheduler.scheduler import Scheduler
    from calsched.settings import QueuePolicy, SchedulerSettings
    from calsched.status import SchedulerStatus

__all__ = [
    "Actor",
    "AgentBusyError",
    "AgentReport",
    "AgentStatus",
    "Backend",
    "BackendConflictError",
    "BackendError",
    "BackendRefusedError",
    "BackendRejectedError",
    "BackendUnavailableError",
    "CalschedError",
    "ConfigError",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "Host",
    "HttpBackend",
    "InvalidInputError",
    "InvalidTransitionError",
    "Journal",
    "JournalError",
    "JournalUnavailableError",
    "LeaseHeldError",
    "LeaseLostError",
    "LocalCalendar",
    "NoActiveSlotError",
    "OutboxRowNotFoundError",
    "QueuePolicy",
    "RejectedSlot",
    "Scheduler",
    "SchedulerSettings",
    "SchedulerStatus",
    "SchemaVersionError",
    "Slot",
    "SlotNotFoundError",
    "SlotState",
    "SlotTools",
    "SlotUpdate",
    "SlotView",
    "StaleSlotError",
    "ToolKey",
    "WakeFailedError",
    "WakeOptions",
    "WakeRequest",
    "__version__",
    "embedded_backend",
]

_ERRORS = (
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
)
_MODEL = (
    "Actor",
    "AgentReport",
    "AgentStatus",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "RejectedSlot",
    "Slot",
    "SlotState",
    "SlotUpdate",
    "SlotView",
    "WakeOptions",
)

#: Where each public name is defined: the module imported the first time it is asked for.
_HOMES: dict[str, str] = {
    **dict.fromkeys(_ERRORS, "calsched.errors"),
    **dict.fromkeys(_MODEL, "calsched.model"),
    **dict.fromkeys(("Backend", "Host", "SlotTools", "WakeRequest"), "calsched.ports"),
    **dict.fromkeys(("QueuePolicy", "SchedulerSettings"), "calsched.settings"),
    "__version__": "calsched._version",
    "HttpBackend": "calsched.backend.http",
    "Journal": "calsched.journal.store",
    "LocalCalendar": "calsched.backend.calendar",
    "Scheduler": "calsched.scheduler.scheduler",
    "SchedulerStatus": "calsched.status",
    "ToolKey": "calsched.journal.idempotency",
    "embedded_backend": "calsched.backend.embedded",
}


__getattr__ = lazy_getattr(__name__, _HOMES)


def __dir__() -> list[str]:
    """The public names, for ``dir(calsched)`` and completion in a REPL."""
    return sorted({*globals(), *__all__})
