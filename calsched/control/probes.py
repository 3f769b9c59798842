"""The probes, served without a token: ``/healthz`` (the process answers) and ``/readyz``
(the scheduler's journal, lease and backend checks; 503 ``not_ready`` naming each failing
one). Probes carry no token, and the details name no secret.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from calsched.control.answers import ApiError
from calsched.status import Readiness


class Probes:
    """The handlers of ``/healthz`` and ``/readyz``."""

    def __init__(self, readiness: Callable[[], Awaitable[Readiness]] | None) -> None:
        self.readiness = readiness

    async def healthz(self, request: Request) -> Response:
        """``GET /healthz``: ``{"ok": true}``."""
        return JSONResponse({"ok": True})

    async def readyz(self, request: Request) -> Response:
        """``GET /readyz``: 200 when every check passes, else 503 with ``Retry-After``."""
        if self.readiness is None:
            raise ApiError(404, "not_found", "readiness is not enabled")
        ready = await self.readiness()
        if ready.ready:
            return JSONResponse(ready.to_wire())
        failed = "; ".join(f"{name}: {ready.checks[name].detail}" for name in ready.failing)
        body = {"error": "not_ready", "message": failed, **ready.to_wire()}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
