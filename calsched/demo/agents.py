"""The simulated agent host: a webhook server in the demo process, and its agents.

The daemon wakes agents by ``POST /wake`` (protocol section 3). Each wake starts one
agent task that follows its :class:`~calsched.demo.scenario.AgentPlan` and calls the
daemon's control API (protocol section 2) with that agent's own token, as a real agent's
tools would. Wakes are deduped on ``source`` + ``attempt``, as the protocol lets hosts do:
a restarted daemon may wake a slot again (wakes are at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import stamina
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from calsched.control import serve_control
from calsched.demo.scenario import AgentPlan, Behaviour, DemoError

__all__ = ["Say", "SimulatedAgents", "ToolCallError", "ToolGate", "create_host_app", "serving"]

#: Where the agents narrate: ``say(text, detail=False)``; details only in the live view.
Say = Callable[..., None]


class ToolGate:
    """Lets the agents' tool calls through, or holds them while the daemon is restarted.

    :meth:`close` also waits until no call is in flight, so the "before" snapshot and the
    kill see the same slots. The SIGKILL still lands in the middle of the daemon's own work
    (heartbeats, wakes, outbox deliveries): only the agents wait.
    """

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0

    @property
    def is_open(self) -> bool:
        """True while calls go through."""
        return self._open.is_set()

    @contextlib.asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        """Wait for the gate to be open, then count as in flight until the block ends."""
        await self._open.wait()
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()

    async def close(self) -> None:
        """Hold new calls and wait for the ones in flight."""
        self._open.clear()
        await self._idle.wait()

    def open(self) -> None:
        """Let calls through again."""
        self._open.set()


class ToolCallError(Exception):
    """An agent's tool call did not get a 200: the demo stops with this as its error."""

    def __init__(self, plan: AgentPlan, verb: str, cause: str) -> None:
        self.plan = plan
        self.verb = verb
        self.cause = cause
        super().__init__(f"{plan.agent_id}'s {verb} of {plan.slot_id} failed: {cause}")


class SimulatedAgents:
    """The agents behind the webhook: one task per new wake, acting by :class:`AgentPlan`.

    ``client`` is an :class:`httpx.AsyncClient` whose base URL is the control API;
    ``tokens`` maps each agent id to its agent token. Failed tool calls are collected in
    :attr:`failures` for the demo to report.
    """

    def __init__(
        self,
        plans: Mapping[str, AgentPlan],
        client: httpx.AsyncClient,
        tokens: Mapping[str, str],
        gate: ToolGate,
        say: Say,
    ) -> None:
        self.plans = plans
        self.client = client
        self.tokens = tokens
        self.gate = gate
        self.say = say
        self.failures: list[ToolCallError] = []
        #: agent id -> the slot it is working on (for ``GET /agents``).
        self.working: dict[str, str] = {}
        self.duplicates = 0
        self._seen: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self, body: Mapping[str, Any]) -> None:
        """Take one wake (protocol section 3). Raises ``KeyError``/``ValueError`` if malformed."""
        agent_id, slot_id = str(body["agent_id"]), str(body["slot_id"])
        key = (str(body["source"]), int(body["attempt"]))
        if key in self._seen:
            self.duplicates += 1
            self.say(f"{agent_id}: woken again for {slot_id} (same source and attempt): ignored")
            return
        self._seen.add(key)
        plan = self.plans.get(slot_id)
        if plan is None:
            self.say(f"{agent_id}: woken for {slot_id}, which the demo did not plan: ignored")
            return
        self.say(f"{agent_id}: woken for {slot_id}, will {plan.behaviour.value}")
        task = asyncio.create_task(self._work(plan), name=f"agent-{slot_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _work(self, plan: AgentPlan) -> None:
        self.working[plan.agent_id] = plan.slot_id
        try:
            await asyncio.sleep(plan.first_delay_s)
            if plan.behaviour is Behaviour.abort:
                await self.tool(plan, "abort", {"reason": plan.text})
                return
            if plan.behaviour is Behaviour.pause_resume_complete:
                await self.tool(plan, "pause", {"reason": "waiting for an upstream job"})
                await asyncio.sleep(plan.pause_s)
                await self.tool(plan, "resume", {})
                await asyncio.sleep(plan.finish_delay_s)
            await self.tool(plan, "complete", {"summary": plan.text})
        except ToolCallError as exc:
            self.failures.append(exc)
            self.say(str(exc))
        finally:
            if self.working.get(plan.agent_id) == plan.slot_id:
                del self.working[plan.agent_id]

    async def tool(self, plan: AgentPlan, verb: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """One tool call, ``POST /v1/agents/<agent>/slot/<verb>``; the slot after it."""
        url = f"/v1/agents/{plan.agent_id}/slot/{verb}"
        headers = {"Authorization": f"Bearer {self.tokens[plan.agent_id]}"}
        # Fenced with slot_id: a late call can never act on a newer slot of the agent.
        payload = {**body, "slot_id": plan.slot_id}
        async with self.gate.call():
            try:
                # Only a refused connection is retried: that request never reached the daemon.
                async for attempt in stamina.retry_context(
                    on=httpx.ConnectError, attempts=20, timeout=15.0, wait_max=0.5
                ):
                    with attempt:
                        response = await self.client.post(url, json=payload, headers=headers)
            except httpx.HTTPError as exc:
                raise ToolCallError(plan, verb, type(exc).__name__) from exc
        if response.status_code != 200:
            raise ToolCallError(plan, verb, f"HTTP {response.status_code}: {response.text}")
        slot: dict[str, Any] = response.json()
        self.say(f"{plan.agent_id}: {verb} {plan.slot_id} -> {slot['state']}", detail=True)
        return slot

    async def join(self) -> None:
        """Wait until every agent started so far has finished (for tests)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def aclose(self) -> None:
        """Cancel the agents still working."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def create_host_app(agents: SimulatedAgents) -> Starlette:
    """The webhook host: ``POST /wake`` (202) starts an agent; ``GET /agents`` lists them."""

    async def wake(request: Request) -> Response:
        try:
            body = await request.json()
            agents.wake(body)
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "bad_request"}, status_code=400)
        return JSONResponse({"accepted": True}, status_code=202)

    async def list_agents(request: Request) -> Response:
        names = sorted({p.agent_id for p in agents.plans.values()})
        listed = [
            {"id": n, "model": "demo-agent", "status": "busy" if n in agents.working else "idle"}
            for n in names
        ]
        return JSONResponse({"agents": listed})

    return Starlette(
        routes=[
            Route("/wake", wake, methods=["POST"]),
            Route("/agents", list_agents, methods=["GET"]),
        ]
    )


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 at a free port; yield its base URL.

    The control API's server class is used because it installs no signal handlers: a
    Ctrl-C must reach the demo, which then kills its daemon and cleans up.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = serve_control(app, "127.0.0.1", port)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="demo-webhook-host")
        try:
            while not server.started:
                if task.done():
                    task.result()  # raises what stopped it, if anything did
                    raise DemoError("the demo's webhook host stopped at start-up")
                await asyncio.sleep(0.01)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=5)
    finally:
        sock.close()
