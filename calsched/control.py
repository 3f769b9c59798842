"""The local control API agents use for their slot tools (protocol section 2).

Every request goes through, in this order:

1. the **Host check** (DNS rebinding): the ``Host`` header, without its port, must be one
   of ``allowed_hosts``, else 403 ``forbidden_host``. It applies to every route, ``/healthz``
   included: a loopback probe names ``127.0.0.1`` anyway, and one rule is easier to trust
   than a list of exceptions. A request without a ``Host`` header is refused the same way.
2. **authentication** (every route but ``/healthz`` and ``/readyz``): ``Authorization:
   Bearer <token>`` with the admin token or an agent token (:mod:`calsched.tokens`); else
   401 ``unauthorized``.
3. **authorization**: an agent token acts only on its own ``/v1/agents/<id>/…`` routes;
   elsewhere it gets 403 ``forbidden``.
4. the **body** (POST): at most ``max_body`` bytes, counted while it streams in (a
   ``Content-Length`` is not trusted), else 413 ``too_large``; it must be a JSON object
   (400 ``bad_request``; an empty body counts as ``{}``); its fields must have the right
   types and ``summary``/``reason`` at most ``max_field`` UTF-8 bytes, with no NUL
   character (422 ``invalid``).
   Unknown fields are ignored. ``slot_id``, if given, fences the call to that slot: a
   call for a slot that is no longer current is 409 ``stale_slot``.
5. the **Idempotency-Key** (POST, optional, 1 to 256 characters): a repeat by the same
   agent with the same key answers as the first call did and changes nothing (the answer
   is kept in the journal database with the change, :mod:`calsched.journal.idempotency`);
   the same key on a different request is 422 ``invalid``.

A call with the admin token is journaled with actor ``operator``, an agent token's with
``agent``. The outbox routes (``/v1/outbox/…``, admin only) retry or discard rows as the
operator (docs/protocol.md; 404 ``not_found``, 409 ``settled``).
``GET /v1/agents/<id>/status`` is what an agent may see of the status: its own
current slot and its recent history (:class:`~calsched.status.AgentStatus`).

Errors are ``{"error": code, "message": text}``. Errors of the tools map to
``no_active_slot`` 404, ``invalid_transition`` 409, ``stale_slot`` 409 and ``invalid``
422; a journal that cannot be written for a passing cause (a full disk, an I/O error) is
503 ``journal_unavailable`` naming the cause, with ``Retry-After``; anything else is
500 ``internal`` with a fixed message (the details go to the log, never a traceback to
the client). Tokens are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import uvicorn
from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from calsched.bodies import read_capped
from calsched.errors import (
    CalschedError,
    ConfigError,
    InvalidInputError,
    InvalidTransitionError,
    JournalUnavailableError,
    LeaseLostError,
    NoActiveSlotError,
    OutboxRowNotFoundError,
    StaleSlotError,
)
from calsched.journal.dead_letters import row_wire
from calsched.journal.idempotency import MAX_KEY_CHARS, ToolKey
from calsched.metrics import CONTENT_TYPE, Metrics
from calsched.model import MAX_ID_CHARS, Actor, Id, SlotView, parse
from calsched.ports import OutboxTools, SlotTools
from calsched.status import AgentStatus, Readiness, SlotEntry
from calsched.tokens import MIN_SECRET_BYTES, agent_of_token, verify_admin_token
from calsched.tracing import NO_TRACING, Tracing

__all__ = [
    "DEFAULT_ALLOWED_HOSTS",
    "MAX_BODY",
    "MAX_FIELD",
    "ControlServer",
    "create_control_app",
    "serve_control",
]

log = logging.getLogger("calsched.control")

#: The names a loopback client puts in ``Host``.
DEFAULT_ALLOWED_HOSTS = ("127.0.0.1", "localhost", "[::1]")
#: Largest request body, in bytes.
MAX_BODY = 64 * 1024
#: Largest ``summary`` or ``reason``, in UTF-8 bytes.
MAX_FIELD = 8 * 1024

# A host name or bracketed IPv6 literal, then an optional numeric port; nothing else.
_HOST_HEADER = re.compile(r"(\[[0-9a-f:.]+\]|[^:\[\]/@\s]+)(?::[0-9]{1,5})?")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    slot_id: Id | None = None


class _CompleteBody(_Body):
    summary: str | None = None


class _ReasonBody(_Body):
    reason: str | None = None


class _DiscardBody(_Body):
    reason: str


_B = TypeVar("_B", bound=_Body)


class _ApiError(Exception):
    """An answer other than 2xx, raised anywhere below an endpoint."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        super().__init__(message)


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _mapped(exc: CalschedError) -> _ApiError | None:
    """The protocol's answer for an error of the tools; ``None`` for an internal one."""
    if isinstance(exc, NoActiveSlotError):
        return _ApiError(404, "no_active_slot", str(exc))
    if isinstance(exc, StaleSlotError):
        return _ApiError(409, "stale_slot", str(exc))
    if isinstance(exc, InvalidTransitionError):
        return _ApiError(409, "invalid_transition", str(exc))
    if isinstance(exc, InvalidInputError):
        return _ApiError(422, "invalid", str(exc))
    if isinstance(exc, OutboxRowNotFoundError):
        return _ApiError(
            409 if exc.settled else 404, "settled" if exc.settled else "not_found", str(exc)
        )
    if isinstance(exc, LeaseLostError):
        # Nothing was committed: the daemon is stepping down; ask the new holder.
        return _ApiError(503, "lease_lost", str(exc))
    if isinstance(exc, JournalUnavailableError):
        # Nothing was committed; the client may retry. The journal writer logs the cause
        # once per episode, so this answer is not logged again per call.
        return _ApiError(
            503, "journal_unavailable", f"{exc}; try again later", {"Retry-After": "5"}
        )
    return None


@dataclass(frozen=True, slots=True)
class _Caller:
    """Who a valid token speaks for: the admin, or one agent."""

    agent_id: str | None

    @property
    def admin(self) -> bool:
        return self.agent_id is None


_Endpoint = Callable[[Request], Awaitable[Response]]


def _endpoint(handler: _Endpoint) -> _Endpoint:
    """Turn every failure of ``handler`` into the protocol's error body."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except _ApiError as exc:
            return _error(exc.status, exc.code, exc.message, exc.headers)
        except CalschedError as exc:
            api = _mapped(exc)
            if api is not None:
                return _error(api.status, api.code, api.message, api.headers)
            log.error("control API: %s %s failed: %s", request.method, request.url.path, exc)
            return _error(500, "internal", "internal error; see the calsched log")
        except Exception:
            # The traceback goes to the log only; the client learns nothing of our insides.
            log.exception("control API: %s %s failed", request.method, request.url.path)
            return _error(500, "internal", "internal error; see the calsched log")

    return run


class _ControlApi:
    """The route handlers, bound to one set of tools, secret and limits."""

    def __init__(
        self,
        tools: SlotTools,
        secret: bytes,
        metrics: Metrics | None,
        max_body: int,
        max_field: int,
        outbox: OutboxTools | None = None,
        readiness: Callable[[], Awaitable[Readiness]] | None = None,
    ) -> None:
        self.tools = tools
        self.outbox = outbox
        self.readiness = readiness
        self.secret = secret
        self.metrics = metrics
        self.max_body = max_body
        self.max_field = max_field
        self._locks: dict[tuple[str, str], _KeyLock] = {}

    # -- who is calling -------------------------------------------------------------------

    def _caller(self, request: Request) -> _Caller:
        """The caller a valid bearer token names; 401 without one."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            if verify_admin_token(self.secret, token):
                return _Caller(agent_id=None)
            agent_id = agent_of_token(self.secret, token)
            if agent_id is not None:
                return _Caller(agent_id=agent_id)
        raise _ApiError(
            401,
            "unauthorized",
            "a valid token is required: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )

    def _admin(self, request: Request) -> None:
        if not self._caller(request).admin:
            raise _ApiError(403, "forbidden", "this route needs the admin token")

    def _agent(self, request: Request) -> str:
        """The route's agent id, once the caller may act for it."""
        caller = self._caller(request)
        agent_id: str = request.path_params["agent_id"]
        if not caller.admin and caller.agent_id != agent_id:
            raise _ApiError(403, "forbidden", "an agent token acts only on its own agent's routes")
        if len(agent_id) > MAX_ID_CHARS:
            raise _ApiError(422, "invalid", f"agent_id: at most {MAX_ID_CHARS} characters")
        return agent_id

    # -- reading the body -----------------------------------------------------------------

    async def _read(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        body = await read_capped(request.stream(), self.max_body, declared=declared)
        if body is None:
            raise _ApiError(413, "too_large", f"the body is over {self.max_body} bytes")
        return body

    async def _body(self, request: Request, model: type[_B]) -> _B:
        raw = await self._read(request)
        if not raw.strip():
            data: Any = {}
        else:
            try:
                data = json.loads(raw)
            except (ValueError, RecursionError):
                raise _ApiError(400, "bad_request", "the body is not JSON") from None
        if not isinstance(data, dict):
            raise _ApiError(400, "bad_request", "the body must be a JSON object")
        body = parse(model, data)  # InvalidInputError -> 422 invalid, naming the field
        for name in ("summary", "reason"):
            value = getattr(body, name, None)
            if value is not None:
                self._check_text(name, value)
        return body

    def _check_text(self, name: str, value: str) -> None:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
            raise _ApiError(422, "invalid", f"{name}: must be valid Unicode") from None
        if "\x00" in value:
            # PostgreSQL text cannot hold NUL: refused here, or the commit fails as a 500.
            raise _ApiError(422, "invalid", f"{name}: must not contain NUL characters")
        if size > self.max_field:
            raise _ApiError(
                422, "invalid", f"{name}: {size} bytes, at most {self.max_field} allowed"
            )

    # -- routes ---------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(self, request: Request) -> Response:
        # No token, like /healthz: probes carry none, and the details name no secret.
        if self.readiness is None:
            raise _ApiError(404, "not_found", "readiness is not enabled")
        ready = await self.readiness()
        if ready.ready:
            return JSONResponse(ready.to_wire())
        failed = "; ".join(f"{name}: {ready.checks[name].detail}" for name in ready.failing)
        body = {"error": "not_ready", "message": failed, **ready.to_wire()}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    async def status(self, request: Request) -> Response:
        self._admin(request)
        return JSONResponse(self.tools.status().to_wire())

    async def metrics_text(self, request: Request) -> Response:
        self._admin(request)
        if self.metrics is None:
            raise _ApiError(404, "not_found", "metrics are not enabled")
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def slot(self, request: Request) -> Response:
        agent_id = self._agent(request)
        return _slot_answer(await self.tools.current_slot(agent_id))

    async def agent_status(self, request: Request) -> Response:
        agent_id = self._agent(request)
        return JSONResponse(AgentStatus.of(self.tools.status(), agent_id).to_wire())

    async def complete(self, request: Request) -> Response:
        return await self._once(request, "complete", _CompleteBody, self._complete)

    async def abort(self, request: Request) -> Response:
        return await self._once(request, "abort", _ReasonBody, self._abort)

    async def pause(self, request: Request) -> Response:
        return await self._once(request, "pause", _ReasonBody, self._pause)

    async def resume(self, request: Request) -> Response:
        return await self._once(request, "resume", _Body, self._resume)

    async def _complete(self, call: _Call, body: _CompleteBody) -> SlotView:
        return await self.tools.complete(
            call.agent_id, body.summary, slot_id=body.slot_id, key=call.key, actor=call.actor
        )

    async def _abort(self, call: _Call, body: _ReasonBody) -> SlotView:
        return await self.tools.abort(
            call.agent_id, body.reason, slot_id=body.slot_id, key=call.key, actor=call.actor
        )

    async def _pause(self, call: _Call, body: _ReasonBody) -> SlotView:
        return await self.tools.pause(
            call.agent_id, body.reason, slot_id=body.slot_id, key=call.key, actor=call.actor
        )

    async def _resume(self, call: _Call, body: _Body) -> SlotView:
        return await self.tools.resume(
            call.agent_id, slot_id=body.slot_id, key=call.key, actor=call.actor
        )

    # -- the operator's outbox actions (admin token only) ---------------------------------

    def _outbox_tools(self, request: Request) -> OutboxTools:
        self._admin(request)
        if self.outbox is None:
            raise _ApiError(404, "not_found", "outbox actions are not served here")
        return self.outbox

    async def outbox_retry(self, request: Request) -> Response:
        tools = self._outbox_tools(request)
        await self._read(request)  # no fields; read so the body's size is still capped
        row_id = request.path_params.get("row_id")  # none: every dead row
        ids = await tools.retry(None if row_id is None else int(row_id), actor=Actor.operator)
        return JSONResponse({"retried": ids})

    async def outbox_discard(self, request: Request) -> Response:
        tools = self._outbox_tools(request)
        body = await self._body(request, _DiscardBody)
        row_id = int(request.path_params["row_id"])
        row = await tools.discard(row_id, body.reason, actor=Actor.operator)
        return JSONResponse({"discarded": row_wire(row), "reason": body.reason})

    # -- idempotency ----------------------------------------------------------------------

    async def _once(
        self,
        request: Request,
        route: str,
        model: type[_B],
        tool: Callable[[_Call, _B], Awaitable[SlotView]],
    ) -> Response:
        """Run one tool call, or answer a repeat of its ``Idempotency-Key`` as first.

        The key is kept by the scheduler in the transaction of the change; a per-key lock
        keeps two concurrent repeats from both deciding (the second waits, then finds the
        first's answer). A call that was refused changed nothing and keeps no answer.
        """
        agent_id = self._agent(request)
        actor = Actor.operator if self._caller(request).admin else Actor.agent
        body = await self._body(request, model)
        raw_key = request.headers.get("idempotency-key")
        if raw_key is None:
            return _slot_answer(await tool(_Call(agent_id, actor, None), body))
        if not 1 <= len(raw_key) <= MAX_KEY_CHARS:
            raise _ApiError(422, "invalid", f"Idempotency-Key: 1 to {MAX_KEY_CHARS} characters")
        key = ToolKey.of(raw_key, route, actor.value, body.model_dump(mode="json"))
        lock = self._locks.setdefault((agent_id, raw_key), _KeyLock())
        lock.users += 1
        try:
            async with lock.lock:
                kept = await self.tools.recall(agent_id, raw_key)
                if kept is not None:
                    if kept.fingerprint != key.fingerprint:
                        raise _ApiError(
                            422,
                            "invalid",
                            "Idempotency-Key: already used for a different request",
                        )
                    return JSONResponse(kept.body, status_code=kept.status)
                return _slot_answer(await tool(_Call(agent_id, actor, key), body))
        finally:
            lock.users -= 1
            if lock.users == 0:
                del self._locks[(agent_id, raw_key)]


@dataclass(frozen=True, slots=True)
class _Call:
    """Who a tool call is for, who makes it, and its key (if it carries one)."""

    agent_id: str
    actor: Actor
    key: ToolKey | None


class _KeyLock:
    """One key's lock and how many calls hold or wait for it (dropped at zero)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


def _slot_answer(view: SlotView) -> Response:
    """One slot, as the protocol answers for it: its :class:`SlotEntry`."""
    return JSONResponse(SlotEntry.from_view(view).to_wire())


class _HostCheck:
    """ASGI middleware: refuse requests whose ``Host`` is not a loopback name we serve.

    A web page on ``evil.example`` whose DNS later points at 127.0.0.1 sends
    ``Host: evil.example``; refusing it keeps a browser from reaching the API.
    """

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._ok(scope):
            response = _error(
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


#: The W3C trace-context headers a call may carry (:class:`_TraceContext`).
_TRACE_HEADERS = (b"traceparent", b"tracestate")


class _TraceContext:
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


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in the protocol's error shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return _error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


def create_control_app(
    tools: SlotTools,
    *,
    secret: bytes,
    metrics: Metrics | None = None,
    allowed_hosts: Sequence[str] = DEFAULT_ALLOWED_HOSTS,
    max_body: int = MAX_BODY,
    max_field: int = MAX_FIELD,
    tracing: Tracing = NO_TRACING,
    outbox: OutboxTools | None = None,
    readiness: Callable[[], Awaitable[Readiness]] | None = None,
) -> Starlette:
    """The control API (protocol section 2) serving ``tools``, as an ASGI app.

    ``secret`` is the daemon secret tokens are derived from (:mod:`calsched.tokens`);
    ``metrics``, if given, is served at ``/metrics``, and ``readiness`` (the scheduler's
    :meth:`~calsched.scheduler.Scheduler.readiness`) at ``/readyz``; ``allowed_hosts``
    are the names accepted in the ``Host`` header (an IPv6 address in brackets, as in
    ``[::1]``); ``tracing``, when on, makes each request a span continuing its
    ``traceparent``; ``outbox``, if given, serves the operator's outbox actions
    (``/v1/outbox/...``).
    Raises :class:`~calsched.errors.ConfigError` for an unusable setting.
    """
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"the control secret must be at least {MIN_SECRET_BYTES} bytes long")
    if isinstance(allowed_hosts, str) or not allowed_hosts:
        raise ConfigError("allowed_hosts must be a non-empty list of host names")
    if max_body < 1 or max_field < 1:
        raise ConfigError("max_body and max_field must be positive")
    api = _ControlApi(tools, secret, metrics, max_body, max_field, outbox, readiness)
    # :path so an agent id holding "/" (sent as %2F, decoded before routing) still routes.
    agent = "/v1/agents/{agent_id:path}/slot"
    routes = [
        Route("/healthz", _endpoint(api.healthz), methods=["GET"]),
        Route("/readyz", _endpoint(api.readyz), methods=["GET"]),
        Route("/v1/status", _endpoint(api.status), methods=["GET"]),
        Route("/metrics", _endpoint(api.metrics_text), methods=["GET"]),
        Route("/v1/agents/{agent_id:path}/status", _endpoint(api.agent_status), methods=["GET"]),
        Route(agent, _endpoint(api.slot), methods=["GET"]),
        Route(f"{agent}/complete", _endpoint(api.complete), methods=["POST"]),
        Route(f"{agent}/abort", _endpoint(api.abort), methods=["POST"]),
        Route(f"{agent}/pause", _endpoint(api.pause), methods=["POST"]),
        Route(f"{agent}/resume", _endpoint(api.resume), methods=["POST"]),
        Route("/v1/outbox/dead/retry", _endpoint(api.outbox_retry), methods=["POST"]),
        Route("/v1/outbox/{row_id:int}/retry", _endpoint(api.outbox_retry), methods=["POST"]),
        Route("/v1/outbox/{row_id:int}/discard", _endpoint(api.outbox_discard), methods=["POST"]),
    ]
    allowed = frozenset(host.strip().lower() for host in allowed_hosts)
    middleware = [Middleware(_HostCheck, allowed=allowed)]
    if tracing.enabled:  # off, not even a pass-through layer
        middleware.append(Middleware(_TraceContext, tracing=tracing))
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error},
    )


class ControlServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT/SIGTERM to its owner.

    uvicorn's own handlers would take the signals from the daemon, whose shutdown must stop
    the scheduler and flush the outbox first; the owner stops this server by setting
    ``should_exit = True``.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Install no signal handlers (see the class docstring)."""
        yield


def serve_control(app: ASGIApp, host: str = "127.0.0.1", port: int = 8765) -> ControlServer:
    """A :class:`ControlServer` for ``app``, configured but not started.

    Run it with ``await server.serve()``; stop it with ``server.should_exit = True``.
    Logging is left to the application (no uvicorn log config, no access log) and no
    proxy headers are trusted.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    return ControlServer(config)
