"""The agents' routes (``/v1/agents/<id>/…``): their current slot, what they may see of
the status, and the four tools, each journaled as ``agent`` (``operator`` with the admin
token) and keyed by an optional ``Idempotency-Key``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from calsched.control.answers import slot_answer
from calsched.control.auth import Auth
from calsched.control.body import B, Body, BodyReader, CompleteBody, ReasonBody
from calsched.control.idempotency import Call, KeyedCalls
from calsched.model import Actor, SlotView
from calsched.ports import SlotTools
from calsched.status import AgentStatus


class AgentRoutes:
    """The handlers of the agents' routes, over one set of tools."""

    def __init__(self, tools: SlotTools, auth: Auth, bodies: BodyReader) -> None:
        self.tools = tools
        self.auth = auth
        self.bodies = bodies
        self.keyed = KeyedCalls(tools)

    async def slot(self, request: Request) -> Response:
        """``GET /v1/agents/<id>/slot``: the agent's current slot."""
        agent_id = self.auth.agent(request)
        return slot_answer(await self.tools.current_slot(agent_id))

    async def agent_status(self, request: Request) -> Response:
        """``GET /v1/agents/<id>/status``: the agent's current slot and recent history."""
        agent_id = self.auth.agent(request)
        return JSONResponse(AgentStatus.of(self.tools.status(), agent_id).to_wire())

    async def complete(self, request: Request) -> Response:
        """``POST …/slot/complete``."""
        return await self._once(request, "complete", CompleteBody, self._complete)

    async def abort(self, request: Request) -> Response:
        """``POST …/slot/abort``."""
        return await self._once(request, "abort", ReasonBody, self._abort)

    async def pause(self, request: Request) -> Response:
        """``POST …/slot/pause``."""
        return await self._once(request, "pause", ReasonBody, self._pause)

    async def resume(self, request: Request) -> Response:
        """``POST …/slot/resume``."""
        return await self._once(request, "resume", Body, self._resume)

    async def _complete(self, call: Call, body: CompleteBody) -> SlotView:
        return await self.tools.complete(
            call.agent_id, body.summary, slot_id=body.slot_id, key=call.key, actor=call.actor
        )

    async def _abort(self, call: Call, body: ReasonBody) -> SlotView:
        return await self.tools.abort(
            call.agent_id, body.reason, slot_id=body.slot_id, key=call.key, actor=call.actor
        )

    async def _pause(self, call: Call, body: ReasonBody) -> SlotView:
        return await self.tools.pause(
            call.agent_id, body.reason, slot_id=body.slot_id, key=call.key, actor=call.actor
        )

    async def _resume(self, call: Call, body: Body) -> SlotView:
        return await self.tools.resume(
            call.agent_id, slot_id=body.slot_id, key=call.key, actor=call.actor
        )

    async def _once(
        self,
        request: Request,
        route: str,
        model: type[B],
        tool: Callable[[Call, B], Awaitable[SlotView]],
    ) -> Response:
        """One tool call: the caller checked, then the body, then its key."""
        agent_id = self.auth.agent(request)
        actor = Actor.operator if self.auth.caller(request).admin else Actor.agent
        body = await self.bodies.parse(request, model)
        call = Call(agent_id, actor, None)
        return await self.keyed.once(
            call, request.headers.get("idempotency-key"), route, body, tool
        )
