"""The scheduler's status: one typed shape for the control API, the CLI and every tool.

``../shared/protocol.md`` section 2 gives the shape; :class:`SchedulerStatus` is it, with
the protocol's field names. The scheduler builds it, the control API serves
``to_wire()``, and the CLI validates the daemon's answer back into it, so a field renamed
on one side fails on the other instead of printing ``None``.

:class:`SlotEntry` is also how the control API answers for one slot (the agent's current
slot, the slot after a tool call).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import PlainSerializer

from calsched.model import CURRENT_STATES, Slot, SlotState, SlotView, WireModel, format_time

__all__ = [
    "AgentStatus",
    "BackendHealth",
    "HistoryEntry",
    "LeaseStatus",
    "OutboxSummary",
    "Readiness",
    "ReadinessCheck",
    "SchedulerStatus",
    "SlotEntry",
]


#: A time on the wire: RFC 3339 UTC with ``Z``, as everywhere in the protocol.
Time = Annotated[datetime, PlainSerializer(format_time, return_type=str, when_used="json")]
#: A slot on the wire: its own shape (times with ``Z``), not pydantic's dataclass dump.
WireSlot = Annotated[Slot, PlainSerializer(Slot.to_wire, when_used="json")]


class SlotEntry(WireModel):
    """A live slot: the slot as received, where it is and since when.

    Example: ``SlotEntry.from_view(view).to_wire()["state"] == "in_progress"``
    """

    slot: WireSlot
    state: SlotState
    attempt: int
    started_at: Time | None
    last_change: Time
    summary: str | None = None
    reason: str | None = None

    @classmethod
    def from_view(cls, view: SlotView) -> SlotEntry:
        """The entry of one slot's projection."""
        return cls(
            slot=view.slot,
            state=view.state,
            attempt=view.attempt,
            started_at=view.started_at,
            last_change=view.updated_at,
            summary=view.summary,
            reason=view.reason,
        )


class HistoryEntry(WireModel):
    """A slot that ended (completed or aborted), newest first in :class:`SchedulerStatus`."""

    slot_id: str
    agent_id: str
    status: SlotState
    resolved_at: Time
    summary: str | None = None
    reason: str | None = None

    @classmethod
    def from_view(cls, view: SlotView) -> HistoryEntry:
        """The entry of an ended slot's projection."""
        return cls(
            slot_id=view.slot_id,
            agent_id=view.agent_id,
            status=view.state,
            resolved_at=view.resolved_at or view.updated_at,
            summary=view.summary,
            reason=view.reason,
        )


class BackendHealth(WireModel):
    """What the last heartbeats said of the backend."""

    last_ok: Time | None = None
    last_error: str | None = None
    key_refused: bool = False


class OutboxSummary(WireModel):
    """Status updates waiting for the backend, and those given up on (dead letters)."""

    pending: int = 0
    dead: int = 0
    #: The slots of the oldest dead-lettered rows (up to 20, by id; ``dead`` counts all).
    dead_slots: list[str] = []


class LeaseStatus(WireModel):
    """The identifier's lease as this daemon holds it (docs/operations.md): the holder
    as last renewed, its epoch (the fencing token) and expiry; ``lost`` says why a lease
    is no longer held (the daemon is stepping down)."""

    state: Literal["held", "lost"]
    lost: str | None = None
    epoch: int
    host: str
    pid: int
    since: Time
    renewed_at: Time
    expires_at: Time
    #: Whether this daemon also holds the death lock (``false`` after a takeover by
    #: expiry, until the silent holder is gone).
    locked: bool
    renewals: int = 0
    refused_writes: int = 0


class SchedulerStatus(WireModel):
    """The scheduler status (protocol section 2).

    Example: ``SchedulerStatus.model_validate(response.json()).outbox.dead``
    """

    enabled: bool = True
    identifier: str
    last_heartbeat: Time | None = None
    heartbeat_every_s: float
    backend: BackendHealth = BackendHealth()
    active: list[SlotEntry] = []
    history: list[HistoryEntry] = []
    outbox: OutboxSummary = OutboxSummary()
    restart_pending: bool = False
    #: ``None`` for a scheduler run without a lease (a library user, the tests).
    lease: LeaseStatus | None = None


class AgentStatus(WireModel):
    """What one agent may see of the status (``GET /v1/agents/<id>/status``, the
    ``calendar_status`` tool): its own current slot, if any, and its recent ended slots,
    newest first. Other agents' slots, the backend and the outbox are the operator's.

    Example: ``AgentStatus.of(status, "bob").current is None``
    """

    agent_id: str
    identifier: str
    current: SlotEntry | None = None
    #: The agent's other live slots (waiting for their turn), oldest first.
    waiting: list[SlotEntry] = []
    history: list[HistoryEntry] = []

    @classmethod
    def of(cls, status: SchedulerStatus, agent_id: str) -> AgentStatus:
        """The part of ``status`` that belongs to ``agent_id``."""
        mine = [e for e in status.active if e.slot.agent_id == agent_id]
        current = next((e for e in mine if e.state in CURRENT_STATES), None)
        return cls(
            agent_id=agent_id,
            identifier=status.identifier,
            current=current,
            waiting=[e for e in mine if e is not current],
            history=[h for h in status.history if h.agent_id == agent_id],
        )


class ReadinessCheck(WireModel):
    """One check of :class:`Readiness`: whether it passed, and a line saying what was seen."""

    ok: bool
    detail: str


class Readiness(WireModel):
    """Whether the daemon can do its work (``GET /readyz``): one entry per check,
    by name (``journal``, ``lease``, ``backend``), and the names of those that failed.

    Example: ``Readiness.of({"journal": ReadinessCheck(ok=True, detail="read ok")}).ready``
    """

    ready: bool
    checks: dict[str, ReadinessCheck]
    failing: list[str] = []

    @classmethod
    def of(cls, checks: dict[str, ReadinessCheck]) -> Readiness:
        """Ready when every check passed."""
        failing = [name for name, check in checks.items() if not check.ok]
        return cls(ready=not failing, checks=checks, failing=failing)
