"""The operator's routes (admin token only): the whole status, the metrics, and the
outbox actions (``/v1/outbox/…``: retry or discard rows as the operator; 404
``not_found``, 409 ``settled``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from calsched.control.answers import ApiError
from calsched.control.auth import Auth
from calsched.control.body import BodyReader, DiscardBody
from calsched.journal.dead_letters import row_wire
from calsched.metrics import CONTENT_TYPE, Metrics
from calsched.model import Actor
from calsched.ports import OutboxTools, SlotTools


class AdminRoutes:
    """The handlers of the admin routes."""

    def __init__(
        self,
        tools: SlotTools,
        auth: Auth,
        bodies: BodyReader,
        metrics: Metrics | None,
        outbox: OutboxTools | None,
    ) -> None:
        self.tools = tools
        self.auth = auth
        self.bodies = bodies
        self.metrics = metrics
        self.outbox = outbox

    async def status(self, request: Request) -> Response:
        """``GET /v1/status``: the scheduler's whole status."""
        self.auth.admin(request)
        return JSONResponse(self.tools.status().to_wire())

    async def metrics_text(self, request: Request) -> Response:
        """``GET /metrics``: the Prometheus text; 404 without a registry."""
        self.auth.admin(request)
        if self.metrics is None:
            raise ApiError(404, "not_found", "metrics are not enabled")
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    def _outbox_tools(self, request: Request) -> OutboxTools:
        self.auth.admin(request)
        if self.outbox is None:
            raise ApiError(404, "not_found", "outbox actions are not served here")
        return self.outbox

    async def outbox_retry(self, request: Request) -> Response:
        """``POST /v1/outbox/<row>/retry`` (or ``dead/retry``: every dead row)."""
        tools = self._outbox_tools(request)
        await self.bodies.read(request)  # no fields; read so the body's size is still capped
        row_id = request.path_params.get("row_id")  # none: every dead row
        ids = await tools.retry(None if row_id is None else int(row_id), actor=Actor.operator)
        return JSONResponse({"retried": ids})

    async def outbox_discard(self, request: Request) -> Response:
        """``POST /v1/outbox/<row>/discard`` with a reason."""
        tools = self._outbox_tools(request)
        body = await self.bodies.parse(request, DiscardBody)
        row_id = int(request.path_params["row_id"])
        row = await tools.discard(row_id, body.reason, actor=Actor.operator)
        return JSONResponse({"discarded": row_wire(row), "reason": body.reason})
