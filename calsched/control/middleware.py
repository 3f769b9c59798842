"""The control API's ASGI middleware: the ``Host`` check every request passes first (step
1 of :mod:`calsched.control`), and, with tracing on, a server span per request.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from calsched.control.answers import error_response
from calsched.tracing import Tracing

# A host name or bracketed IPv6 literal, then an optional numeric port; nothing else.
_HOST_HEADER = re.compile(r"(\[[0-9a-f:.]+\]|[^:\[\]/@\s]+)(?::[0-9]{1,5})?")

#: The W3C trace-context headers a call may carry (:class:`TraceContext`).
_TRACE_HEADERS = (b"traceparent", b"tracestate")


class HostCheck:
    """ASGI middleware: refuse requests whose ``Host`` is not a loopback name we serve.

    A web page on ``evil.example`` whose DNS later points at 127.0.0.1 sends
    ``Host: evil.example``; refusing it keeps a browser from reaching the API.
    """

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._ok(scope):
            response = error_response(
                403,
                "forbidden_host",
                "the Host header must name one of: " + ", ".join(sorted(self.allowed)),
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _ok(self, scope: Scope) -> bool:
        values = [v for k, v in scope["headers"] if k == b"host"]
        if len(values) != 1:  # none, or an ambiguous pair
            return False
        match = _HOST_HEADER.fullmatch(values[0].decode("latin-1").strip().lower())
        return match is not None and match.group(1) in self.allowed


class TraceContext:
    """ASGI middleware, with tracing on only: each request is a server span that
    continues the caller's ``traceparent`` (W3C trace context), or starts a trace.

    The tool call's span is its child, and so is the wake of a next slot that call
    starts: the trace goes on to the host. Named ``METHOD /route`` once routed (the
    route's template: an agent id is an attribute, never part of the name).
    """

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in _TRACE_HEADERS
        }
        method: str = scope["method"]
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        attributes = {"http.request.method": method}
        with self.tracing.span(method, attributes, kind="server", parent=carrier) as span:
            await self.app(scope, receive, sending)
            route = getattr(scope.get("route"), "path", None)
            if route is not None:
                span.rename(f"{method} {route}")
                span.set("http.route", route)
            span.set("http.response.status_code", status)
            if status >= 500:
                span.fail(f"HTTP {status}")
