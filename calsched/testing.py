"""Public fakes for tests: yours and ours.

- :class:`InMemoryHost`: a :class:`~calsched.ports.Host` that records wakes and can fail
  or hang them.
- :class:`InMemoryBackend`: a :class:`~calsched.ports.Backend` that serves the slots you
  give it, records status updates once per idempotency key, and raises errors you queue.
- :class:`FaultPlan`: faults for the reference backend
  (:func:`calsched.backend.server.create_backend_app`) to apply to its next requests;
  it lives beside the backend, in :mod:`calsched.backend.faults`, and is re-exported here.
- :func:`serve_backend`: run an ASGI app under uvicorn on a free loopback port.

This module imports no test framework; uvicorn is imported only when a server starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from calsched.backend.faults import Fault, FaultKind, FaultPlan, FaultRoute
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
    :meth:`heal` or cancellation (:meth:`hang_wakes`). Use it from one event loop.
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


# -- a real server ------------------------------------------------------------------------


@asynccontextmanager
async def serve_backend(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 10.0
) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on ``port`` of ``host`` (a free one by default); yield its
    base URL. A given ``port`` lets a test stop a server and start it again at the same URL.

    The server runs as a task of the current event loop and is shut down on exit;
    requests still hanging then are cancelled after a short grace.
    """
    import uvicorn  # imported here: most users of this module never start a server

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
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
