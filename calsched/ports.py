"""The interfaces between the scheduler and its adapters (ports and adapters).

The scheduler depends only on these protocols; ``calsched.backend``, ``calsched.host`` and
``calsched.testing`` implement them, and ``calsched.control`` serves :class:`SlotTools`.

The scheduler bounds every call it makes through :class:`Backend` and :class:`Host`
(``settings.backend_deadline_s``, ``settings.wake_timeout_s``) by cancelling it, so
implementations need no deadline of their own; they must only be cancellation-safe (close
their streams, kill and reap what they started).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from calsched.journal.idempotency import Remembered, ToolKey
from calsched.journal.rows import OutboxRow
from calsched.model import (
    Actor,
    AgentReport,
    HeartbeatRequest,
    HeartbeatResponse,
    RejectedSlot,
    SlotUpdate,
    SlotView,
)
from calsched.status import SchedulerStatus

__all__ = ["Backend", "Host", "OutboxTools", "SlotTools", "WakeRequest"]


@dataclass(frozen=True, slots=True)
class WakeRequest:
    """What the host is asked to do: give ``message`` to ``agent_id``.

    Hosts may dedupe on ``source`` + ``attempt``: wakes are at-least-once after a crash.
    ``trace`` is the W3C trace context of the wake (``traceparent``, ``tracestate``) when
    tracing is on, for the host to continue; it is not part of the body.

    Example: ``queue.put_nowait((request.agent_id, request.message))``
    """

    agent_id: str
    message: str
    source: str
    slot_id: str
    attempt: int
    trace: Mapping[str, str] = field(default_factory=dict, compare=False)

    def to_wire(self) -> dict[str, Any]:
        """The webhook body (protocol section 3)."""
        return {
            "agent_id": self.agent_id,
            "message": self.message,
            "source": self.source,
            "slot_id": self.slot_id,
            "attempt": self.attempt,
        }


class Backend(Protocol):
    """The calendar backend (protocol section 1).

    Each call is bounded by the scheduler's ``backend_deadline_s``; a call still running
    then is cancelled and counted as ``no answer within Ns``. Shipped:
    :class:`~calsched.backend.http.HttpBackend` and
    :func:`~calsched.backend.embedded.embedded_backend`.
    """

    async def heartbeat(
        self, request: HeartbeatRequest
    ) -> tuple[HeartbeatResponse, list[RejectedSlot]]:
        """Send a beat; return the valid slots and the ones skipped as invalid.

        Raises :class:`~calsched.errors.BackendError` (a subclass says which kind).
        """
        ...

    async def send_status(self, slot_id: str, update: SlotUpdate, idempotency_key: str) -> None:
        """Tell the backend a slot's status. Returns on 200/202/204.

        Raises :class:`~calsched.errors.BackendConflictError` (409),
        :class:`~calsched.errors.BackendRejectedError` (404/400/422),
        :class:`~calsched.errors.BackendRefusedError` (401/403) or
        :class:`~calsched.errors.BackendUnavailableError` (passing faults).
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class Host(Protocol):
    """The agent host: wakes agents and lists them.

    Each call is bounded by the scheduler's ``wake_timeout_s``; a wake still running then is
    cancelled and fails with ``timeout after Ns``, a list still running gives no agents.
    Any class with these two methods is a host (docs/embedding.md shows one on a queue).
    """

    async def wake_agent(self, request: WakeRequest) -> None:
        """Deliver a wake; raise :class:`~calsched.errors.WakeFailedError` if not accepted."""
        ...

    async def list_agents(self) -> list[AgentReport]:
        """The agents to report in the heartbeat (may be empty)."""
        ...


class SlotTools(Protocol):
    """The agents' tools, as the scheduler serves them to the control API and the CLI.

    ``slot_id``, when given, must be the agent's current slot (generation fencing), or
    :class:`~calsched.errors.StaleSlotError` is raised. ``key``, when given, is kept with
    the change in its transaction, for :meth:`recall` to answer a repeat; ``actor`` is
    who the journal records (``operator`` for a call with the admin token).
    """

    async def current_slot(self, agent_id: str) -> SlotView:
        """The agent's current slot; :class:`~calsched.errors.NoActiveSlotError` if none."""
        ...

    async def complete(
        self,
        agent_id: str,
        summary: str | None = None,
        *,
        slot_id: str | None = None,
        key: ToolKey | None = None,
        actor: Actor = Actor.agent,
    ) -> SlotView:
        """Complete the agent's current slot."""
        ...

    async def abort(
        self,
        agent_id: str,
        reason: str | None = None,
        *,
        slot_id: str | None = None,
        key: ToolKey | None = None,
        actor: Actor = Actor.agent,
    ) -> SlotView:
        """Abort the agent's current slot."""
        ...

    async def pause(
        self,
        agent_id: str,
        reason: str | None = None,
        *,
        slot_id: str | None = None,
        key: ToolKey | None = None,
        actor: Actor = Actor.agent,
    ) -> SlotView:
        """Pause the agent's current slot."""
        ...

    async def resume(
        self,
        agent_id: str,
        *,
        slot_id: str | None = None,
        key: ToolKey | None = None,
        actor: Actor = Actor.agent,
    ) -> SlotView:
        """Resume the agent's paused slot."""
        ...

    async def recall(self, agent_id: str, key: str) -> Remembered | None:
        """The answer kept for ``agent_id``'s call under ``key``; ``None`` if none is."""
        ...

    def status(self) -> SchedulerStatus:
        """The scheduler status in the protocol's shape (section 2)."""
        ...


class OutboxTools(Protocol):
    """The operator's outbox actions, as the scheduler serves them to the control API
    (:mod:`calsched.journal.dead_letters` has the rules)."""

    async def retry(self, row_id: int | None, *, actor: Actor = Actor.operator) -> list[int]:
        """Make a row (``None``: every dead row) due now; the ids retried.

        Raises :class:`~calsched.errors.OutboxRowNotFoundError` for a row that does not
        wait for delivery.
        """
        ...

    async def discard(
        self, row_id: int, reason: str, *, actor: Actor = Actor.operator
    ) -> OutboxRow:
        """Settle a row without delivering it, recording who and why; the row as it was."""
        ...
