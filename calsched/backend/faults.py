"""Planned faults for the reference backend, and the ASGI middleware that applies them.

:class:`FaultPlan` queues what the backend should get wrong; :class:`FaultMiddleware`
wraps the reference backend's app (``create_backend_app(..., faults=plan)`` adds it) and
applies the next planned fault to each ``POST /v1/heartbeat`` and
``POST /v1/slots/{slot_id}/status``, in arrival order, before the app sees the request (so
before authentication). A backend built without a plan carries none of this: the
daemon's embedded backend and ``calsched backend serve`` never pass one.

Tests reach these names through :mod:`calsched.testing`.
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import anyio
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Fault", "FaultKind", "FaultMiddleware", "FaultPlan", "FaultRoute"]

#: Which route a fault applies to.
FaultRoute = Literal["heartbeat", "status", "any"]
_Route = Literal["heartbeat", "status"]
_PAD_CHUNK = 64 * 1024


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
    too_deep_json = "too_deep_json"
    truncated_body = "truncated_body"
    connection_reset = "connection_reset"


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

    What the backend does for each (:class:`FaultMiddleware`):

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
    - ``too_deep_json``: answers ``status`` (200) with ``nbytes`` nested JSON arrays, too
      deep for a recursive parser, not handling the request.
    - ``truncated_body``: handles the request, then sends the answer's headers (with its
      real ``Content-Length``) and only half its body, and stops: the server closes the
      connection mid-answer, so the work is done and the client cannot know it.
    - ``connection_reset``: without handling the request, sends a 200's headers
      announcing a body, and stops: the server closes the connection before any body.
      (A close by the server mid-answer, which the client sees as the peer hanging up;
      not a TCP RST, which ASGI cannot send.)

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

    def too_deep_json(
        self, depth: int = 100_000, *, status: int = 200, route: FaultRoute = "any", times: int = 1
    ) -> FaultPlan:
        """Answer ``status`` with ``depth`` nested JSON arrays (valid, but too deep)."""
        if depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        return self._add(Fault(FaultKind.too_deep_json, route, status=status, nbytes=depth), times)

    def truncated_body(self, *, route: FaultRoute = "any", times: int = 1) -> FaultPlan:
        """Handle the request, then send half the answer's body and close the connection."""
        return self._add(Fault(FaultKind.truncated_body, route), times)

    def connection_reset(self, *, route: FaultRoute = "any", times: int = 1) -> FaultPlan:
        """Close the connection after a 200's headers, the request not handled."""
        return self._add(Fault(FaultKind.connection_reset, route, status=200), times)

    def take(self, route: _Route) -> Fault | None:
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


def _route_of(scope: Scope) -> _Route | None:
    """The route a request takes faults on; ``None`` for requests that never do."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path: str = scope["path"]
    if path == "/v1/heartbeat":
        return "heartbeat"
    if path.startswith("/v1/slots/") and path.endswith("/status"):
        return "status"
    return None


class FaultMiddleware:
    """Applies ``plan``'s next fault to each heartbeat and status post of ``app``.

    A request with no fault planned goes to ``app`` untouched. ``slow_drip`` and
    ``execute_then_timeout`` act on whatever ``app`` answers, an error answer included.
    """

    def __init__(self, app: ASGIApp, plan: FaultPlan) -> None:
        self.app = app
        self.plan = plan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request, misbehaving as planned."""
        route = _route_of(scope)
        fault = self.plan.take(route) if route is not None else None
        if fault is None:
            await self.app(scope, receive, send)
            return
        instead = _answer_instead(fault)
        if instead is not None:
            await instead(scope, receive, send)
        elif fault.kind is FaultKind.connection_reset:
            # Returning with the answer unfinished makes the server drop the connection.
            headers = [(b"content-type", b"application/json"), (b"content-length", b"64")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        elif fault.kind is FaultKind.hang:
            received = await _hold(receive, fault.seconds)
            if received is not None:  # else nobody is listening any more
                await self.app(scope, _replay(received, receive), send)
        else:
            start, body = await _answer_of(self.app, scope, receive)
            if fault.kind is FaultKind.slow_drip:
                await _drip(send, start, body, fault.seconds, fault.chunks)
            elif fault.kind is FaultKind.truncated_body:
                # The real Content-Length stays, so the client knows the body is short;
                # returning with the answer unfinished makes the server drop the connection.
                await send(start)
                half = body[: len(body) // 2]
                await send({"type": "http.response.body", "body": half, "more_body": True})
            elif not await _until_client_gone(receive, fault.seconds):
                # execute_then_timeout: the work is done and committed; only the answer
                # is withheld, and it is sent only to a client that waited that long.
                await send(start)
                await send({"type": "http.response.body", "body": body})


def _answer_instead(fault: Fault) -> Response | None:
    """The answer for a fault that replaces handling altogether."""
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    status = fault.status or 200
    if fault.kind is FaultKind.refused:
        return JSONResponse(
            {"error": "unauthorized", "message": "refused (planned fault)"}, status_code=status
        )
    if fault.kind in (FaultKind.server_error, FaultKind.too_many):
        return JSONResponse(
            {"error": "unavailable", "message": "planned fault"},
            status_code=status,
            headers=headers,
        )
    if fault.kind is FaultKind.malformed_json:
        return Response(
            b'{"slots_to_fire": [{"id": "s-', status_code=status, media_type="application/json"
        )
    if fault.kind is FaultKind.too_deep_json:
        deep = b"[" * fault.nbytes + b"]" * fault.nbytes
        return Response(deep, status_code=status, media_type="application/json")
    if fault.kind is FaultKind.oversized:
        return StreamingResponse(_padding(fault.nbytes), media_type="application/json")
    return None


async def _hold(receive: Receive, seconds: float) -> list[Message] | None:
    """Read the request for ``seconds``: what arrived, or ``None`` if the client left."""
    received: list[Message] = []
    with anyio.move_on_after(seconds):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            received.append(message)
    return received


def _replay(received: list[Message], receive: Receive) -> Receive:
    """``receive`` that first hands out the messages already read."""
    queue = list(received)

    async def replayed() -> Message:
        return queue.pop(0) if queue else await receive()

    return replayed


async def _answer_of(app: ASGIApp, scope: Scope, receive: Receive) -> tuple[Message, bytes]:
    """Run ``app`` to the end; its response-start message and its whole body."""
    start: Message = {"type": "http.response.start", "status": 500, "headers": []}
    body = bytearray()

    async def keep(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, keep)
    return start, bytes(body)


async def _until_client_gone(receive: Receive, seconds: float) -> bool:
    """Wait up to ``seconds``; true as soon as the client disconnects."""
    with anyio.move_on_after(seconds):
        # Any rest of the request body is skipped: only the disconnect matters here.
        while (await receive())["type"] != "http.disconnect":
            pass
        return True
    return False


async def _drip(send: Send, start: Message, body: bytes, seconds: float, chunks: int) -> None:
    """Send the answer in ``chunks`` pieces over ``seconds``, without a Content-Length."""
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    await send({**start, "headers": headers})
    size = max(1, math.ceil(len(body) / chunks))
    pause = seconds / chunks
    for index in range(chunks):
        await anyio.sleep(pause)
        piece = body[index * size : (index + 1) * size]
        if piece:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _padding(nbytes: int) -> AsyncIterator[bytes]:
    # Valid JSON if read to the end, so only a size cap can refuse it.
    head, tail = b'{"slots_to_fire": [], "padding": "', b'"}'
    yield head
    left = max(0, nbytes - len(head) - len(tail))
    while left > 0:
        step = min(left, _PAD_CHUNK)
        yield b" " * step
        left -= step
        await anyio.sleep(0)
    yield tail
