"""Public fakes for tests: yours and ours.

- :class:`InMemoryHost`: a :class:`~calsched.ports.Host` and
  :class:`~calsched.ports.RunningProbe` that records wakes and can fail or hang them.
- :class:`InMemoryBackend`: a :class:`~calsched.ports.Backend` that serves the slots you
  give it, records status updates once per idempotency key, and raises errors you queue.
- :class:`FaultPlan`: faults for the reference backend
  (:func:`calsched.backend.server.create_backend_app`) to apply to its next requests.
- :func:`serve_backend`: run an ASGI app under uvicorn on a free loopback port.

This module imports no test framework; uvicorn is imported only when a server starts.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from calsched.errors import BackendConflictError, BackendError, WakeFailedError
from calsched.model import (
    AgentReport,
    AgentStatus,
    HeartbeatRequest,
    HeartbeatResponse,
    RejectedSlot,
    Slot,
    SlotUpdate,
)
from calsched.ports import WakeRequest

if TYPE_CHECKING:
    from starlette.types import ASGIApp

__all__ = [
    "Fault",
    "FaultKind",
    "FaultPlan",
    "FaultRoute",
    "InMemoryBackend",
    "InMemoryHost",
    "serve_backend",
]


# -- the host -----------------------------------------------------------------------------


class InMemoryHost:
    """A host in memory: every wake is recorded in :attr:`wakes`; agents are a plain list.

    Tell it to fail an agent's wakes (:meth:`fail_wakes`) or to hang them until
    :meth:`heal` or cancellation (:meth:`hang_wakes`). :meth:`is_running` answers from
    :attr:`running`, a set of ``(agent_id, source)`` the test controls (``None`` for every
    question while :attr:`probe_known` is false). Use it from one event loop.
    """

    def __init__(self, agents: Iterable[AgentReport | str] = ()) -> None:
        #: What :meth:`list_agents` returns; strings become idle agents.
        self.agents: list[AgentReport] = [
            a if isinstance(a, AgentReport) else AgentReport(id=a, status=AgentStatus.idle)
            for a in agents
        ]
        #: Every wake asked for, in order, including failed and hung ones.
        self.wakes: list[WakeRequest] = []
        #: The wakes that were accepted.
        self.accepted: list[WakeRequest] = []
        #: ``(agent_id, source)`` pairs :meth:`is_running` answers true for.
        self.running: set[tuple[str, str]] = set()
        #: While false, :meth:`is_running` answers ``None`` (the host cannot tell).
        self.probe_known = True
        self._failing: dict[str, str] = {}
        self._hanging: set[str] = set()
        self._released = asyncio.Event()

    def fail_wakes(self, agent_id: str, cause: str = "the host refused the wake") -> None:
        """Make wakes for ``agent_id`` raise :class:`~calsched.errors.WakeFailedError`."""
        self._failing[agent_id] = cause

    def hang_wakes(self, agent_id: str) -> None:
        """Make wakes for ``agent_id`` wait until :meth:`heal` (or until cancelled)."""
        self._hanging.add(agent_id)

    def heal(self, agent_id: str | None = None) -> None:
        """Clear the faults of ``agent_id`` (of every agent by default); release hung wakes.

        A released wake goes on as if it had just arrived (it fails if still told to).
        """
        if agent_id is None:
            self._failing.clear()
            self._hanging.clear()
        else:
            self._failing.pop(agent_id, None)
            self._hanging.discard(agent_id)
        released, self._released = self._released, asyncio.Event()
        released.set()

    def wakes_for(self, agent_id: str) -> list[WakeRequest]:
        """The wakes asked for ``agent_id``, in order."""
        return [w for w in self.wakes if w.agent_id == agent_id]

    async def wake_agent(self, request: WakeRequest) -> None:
        """Record the wake; fail or hang it as told; otherwise accept it."""
        self.wakes.append(request)
        while request.agent_id in self._hanging:
            await self._released.wait()
        cause = self._failing.get(request.agent_id)
        if cause is not None:
            raise WakeFailedError(request.agent_id, cause)
        self.accepted.append(request)

    async def list_agents(self) -> list[AgentReport]:
        """A copy of :attr:`agents`."""
        return list(self.agents)

    async def is_running(self, agent_id: str, source: str) -> bool | None:
        """Whether ``(agent_id, source)`` is in :attr:`running`; ``None`` if not known."""
        if not self.probe_known:
            return None
        return (agent_id, source) in self.running


# -- the backend --------------------------------------------------------------------------


class InMemoryBackend:
    """A backend in memory, for scheduler tests without HTTP.

    Every heartbeat returns :attr:`to_fire` (change it between beats) and is recorded in
    :attr:`heartbeats`. Status updates are recorded in :attr:`updates` once per
    idempotency key (a replay is acknowledged and counted in :attr:`replays`). Queue
    errors with :meth:`fail_heartbeat` / :meth:`fail_status`; give a slot a terminal
    status with :meth:`hold` to answer its updates with a 409 conflict.
    """

    def __init__(self, to_fire: Iterable[Slot] = ()) -> None:
        #: Slots every heartbeat returns.
        self.to_fire: list[Slot] = list(to_fire)
        #: Invalid slots every heartbeat reports as rejected.
        self.rejected: list[RejectedSlot] = []
        #: Sent as the heartbeat's ``restart_pending``.
        self.restart_pending = False
        #: Every heartbeat request, in order.
        self.heartbeats: list[HeartbeatRequest] = []
        #: Accepted status updates: ``(slot_id, update, idempotency_key)``, once per key.
        self.updates: list[tuple[str, SlotUpdate, str]] = []
        #: How many status posts were replays of a key already accepted.
        self.replays = 0
        self.closed = False
        self._keys: set[str] = set()
        self._held: dict[str, tuple[str, str | None]] = {}
        self._heartbeat_errors: list[BackendError] = []
        self._status_errors: list[BackendError] = []

    def fail_heartbeat(self, error: BackendError, *, times: int = 1) -> None:
        """Raise ``error`` on the next ``times`` heartbeats."""
        self._heartbeat_errors.extend([error] * times)

    def fail_status(self, error: BackendError, *, times: int = 1) -> None:
        """Raise ``error`` on the next ``times`` status posts (before recording them)."""
        self._status_errors.extend([error] * times)

    def hold(self, slot_id: str, status: str, reason: str | None = None) -> None:
        """Answer later updates for ``slot_id`` with a conflict holding ``status``."""
        self._held[slot_id] = (status, reason)

    def updates_for(self, slot_id: str) -> list[SlotUpdate]:
        """The accepted updates for ``slot_id``, in order."""
        return [u for sid, u, _ in self.updates if sid == slot_id]

    async def heartbeat(
        self, request: HeartbeatRequest
    ) -> tuple[HeartbeatResponse, list[RejectedSlot]]:
        """Record the beat; raise a queued error or return :attr:`to_fire`."""
        self.heartbeats.append(request)
        if self._heartbeat_errors:
            raise self._heartbeat_errors.pop(0)
        response = HeartbeatResponse(
            slots_to_fire=list(self.to_fire), restart_pending=self.restart_pending
        )
        return response, list(self.rejected)

    async def send_status(self, slot_id: str, update: SlotUpdate, idempotency_key: str) -> None:
        """Raise a queued error or a held conflict; record the update once per key."""
        if self._status_errors:
            raise self._status_errors.pop(0)
        if idempotency_key in self._keys:
            self.replays += 1
            return
        held = self._held.get(slot_id)
        if held is not None and held[0] != update.status.value:
            raise BackendConflictError(
                f"slot {slot_id!r} is already {held[0]}", status=held[0], reason=held[1]
            )
        self._keys.add(idempotency_key)
        self.updates.append((slot_id, update, idempotency_key))

    async def aclose(self) -> None:
        """Mark the backend closed."""
        self.closed = True


# -- faults for the reference backend ---------------------------------------------------

#: Which route a fault applies to.
FaultRoute = Literal["heartbeat", "status", "any"]


class FaultKind(enum.StrEnum):
    """What the reference backend does instead of (or around) its normal answer."""

    refused = "refused"
    server_error = "server_error"
    too_many = "too_many"
    hang = "hang"
    slow_drip = "slow_drip"
    malformed_json = "malformed_json"
    execute_then_timeout = "execute_then_timeout"
    oversized = "oversized"


@dataclass(frozen=True, slots=True)
class Fault:
    """One planned fault; build them with :class:`FaultPlan`'s methods."""

    kind: FaultKind
    route: FaultRoute = "any"
    status: int | None = None
    retry_after: str | None = None
    seconds: float = 0.0
    chunks: int = 1
    nbytes: int = 0


@dataclass(slots=True)
class _Planned:
    fault: Fault
    left: int


def _retry_after(value: float | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


class FaultPlan:
    """Faults the reference backend applies to its next matching requests, in order.

    Each method queues a fault for ``times`` requests on ``route`` (``"heartbeat"``,
    ``"status"`` or ``"any"``) and returns the plan, so calls chain::

        plan = FaultPlan().server_error(503, retry_after=2).too_many(route="status")

    What the server does for each (see :mod:`calsched.backend.server`):

    - ``refused``: answers 401 (or ``status``) without looking at the request.
    - ``server_error`` / ``too_many``: answers 5xx / 429, with ``Retry-After`` if given.
    - ``hang``: answers nothing for ``seconds`` (less if the client hangs up first), then
      handles the request normally if the client is still there.
    - ``slow_drip``: handles the request, then sends the answer in ``chunks`` pieces
      spread over ``total_seconds``.
    - ``malformed_json``: answers ``status`` (200) with a truncated JSON body, not
      handling the request.
    - ``execute_then_timeout``: handles the request (a status update is recorded), then
      answers nothing until the client gives up (at most ``hang_seconds``): the retry
      must be deduplicated by its ``Idempotency-Key``.
    - ``oversized``: answers 200 with a streamed body of ``nbytes`` and no
      ``Content-Length``, not handling the request.

    Thread-safe: the test and the server may run on different threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Planned] = []
        #: The faults applied so far, in order.
        self.applied: list[Fault] = []

    def _add(self, fault: Fault, times: int) -> FaultPlan:
        if times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        with self._lock:
            self._queue.append(_Planned(fault, times))
        return self

    def refused(self, *, status: int = 401, route: FaultRoute = "any", times: int = 1) -> FaultPlan:
        """Answer 401 (or ``status``, e.g. 403)."""
        return self._add(Fault(FaultKind.refused, route, status=status), times)

    def server_error(
        self,
        status: int = 503,
        retry_after: float | str | None = None,
        *,
        route: FaultRoute = "any",
        times: int = 1,
    ) -> FaultPlan:
        """Answer a 5xx (default 503), with ``Retry-After`` (seconds or an HTTP-date)."""
        fault = Fault(
            FaultKind.server_error, route, status=status, retry_after=_retry_after(retry_after)
        )
        return self._add(fault, times)

    def too_many(
        self, retry_after: float | str | None = None, *, route: FaultRoute = "any", times: int = 1
    ) -> FaultPlan:
        """Answer 429, with ``Retry-After`` if given."""
        fault = Fault(FaultKind.too_many, route, status=429, retry_after=_retry_after(retry_after))
        return self._add(fault, times)

    def hang(self, seconds: float, *, route: FaultRoute = "any", times: int = 1) -> FaultPlan:
        """Say nothing for ``seconds`` (or until the client hangs up), then answer."""
        return self._add(Fault(FaultKind.hang, route, seconds=seconds), times)

    def slow_drip(
        self, total_seconds: float, chunks: int = 10, *, route: FaultRoute = "any", times: int = 1
    ) -> FaultPlan:
        """Send the real answer in ``chunks`` pieces over ``total_seconds``."""
        if chunks < 1:
            raise ValueError(f"chunks must be at least 1, not {chunks}")
        fault = Fault(FaultKind.slow_drip, route, seconds=total_seconds, chunks=chunks)
        return self._add(fault, times)

    def malformed_json(
        self, *, status: int = 200, route: FaultRoute = "any", times: int = 1
    ) -> FaultPlan:
        """Answer ``status`` with a body that is not valid JSON."""
        return self._add(Fault(FaultKind.malformed_json, route, status=status), times)

    def execute_then_timeout(
        self, *, hang_seconds: float = 30.0, route: FaultRoute = "status", times: int = 1
    ) -> FaultPlan:
        """Handle the request, then answer nothing until the client gives up."""
        return self._add(Fault(FaultKind.execute_then_timeout, route, seconds=hang_seconds), times)

    def oversized(
        self, nbytes: int, *, route: FaultRoute = "heartbeat", times: int = 1
    ) -> FaultPlan:
        """Answer 200 with a streamed body of ``nbytes`` bytes and no Content-Length."""
        return self._add(Fault(FaultKind.oversized, route, status=200, nbytes=nbytes), times)

    def take(self, route: Literal["heartbeat", "status"]) -> Fault | None:
        """The next fault for a request on ``route``, consumed; ``None`` if there is none."""
        with self._lock:
            for planned in self._queue:
                if planned.fault.route in (route, "any"):
                    planned.left -= 1
                    if planned.left == 0:
                        self._queue.remove(planned)
                    self.applied.append(planned.fault)
                    return planned.fault
        return None

    def pending(self) -> list[Fault]:
        """The faults not yet applied, one entry per remaining use."""
        with self._lock:
            return [p.fault for p in self._queue for _ in range(p.left)]

    def clear(self) -> None:
        """Drop every pending fault."""
        with self._lock:
            self._queue.clear()


# -- a real server ------------------------------------------------------------------------


@asynccontextmanager
async def serve_backend(
    app: ASGIApp, *, host: str = "127.0.0.1", startup_timeout_s: float = 10.0
) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on a free port of ``host``; yield its base URL.

    The server runs as a task of the current event loop and is shut down on exit;
    requests still hanging then are cancelled after a short grace.
    """
    import uvicorn  # imported here: most users of this module never start a server

    config = uvicorn.Config(
        app,
        host=host,
        port=0,
        http="h11",
        ws="none",
        lifespan="off",
        access_log=False,
        log_config=None,  # leave the process's logging alone
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="calsched-test-backend")
    try:
        async with asyncio.timeout(startup_timeout_s):
            while not server.started:
                if task.done():
                    task.result()  # re-raise a start-up failure
                    raise RuntimeError("the test server stopped before it started")
                await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        url_host = f"[{host}]" if ":" in host else host
        yield f"http://{url_host}:{port}"
    finally:
        server.should_exit = True
        await task
