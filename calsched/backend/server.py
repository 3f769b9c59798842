"""The reference backend: a :class:`LocalCalendar` served over protocol section 1.

:func:`create_backend_app` builds a Starlette app with:

- ``POST /v1/heartbeat``: fires what is due for the beat's identifier
  (:meth:`LocalCalendar.fire_due`) and answers ``{"slots_to_fire": [...],
  "restart_pending": false}``. Nothing else of the beat is stored.
- ``POST /v1/slots/{slot_id}/status``: records the update once per ``Idempotency-Key``
  and answers 200 with the receipt; a replayed key gets the same answer (and the header
  ``Idempotent-Replayed: true``) and records nothing.
- ``GET /v1/receipts[?slot_id=…]``: the receipts, for tests and inspection.

Answers: 401 without the right ``Authorization: Bearer`` key, 400 for a body that is not
JSON, 413 for a body over ``max_body_bytes``, 422 for missing or bad fields (or a reused
idempotency key), 404 for an unknown slot, 409 ``{"status", "reason"}`` when the calendar
holds another terminal status, 503 when the database cannot be used. Error bodies are
``{"error": code, "message": text}`` (the 409 adds ``status`` and ``reason``).

The calendar is synchronous: every call to it runs in a worker thread, so a slow commit
never stalls the event loop. Given a :class:`~calsched.backend.faults.FaultPlan`, the app
is wrapped in :class:`~calsched.backend.faults.FaultMiddleware` and misbehaves on purpose;
without one it has no fault code on its request path.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from calsched.backend.calendar import LocalCalendar
from calsched.bodies import read_capped
from calsched.errors import (
    BackendConflictError,
    ConfigError,
    InvalidInputError,
    JournalError,
    SlotNotFoundError,
)
from calsched.model import HeartbeatRequest, SlotUpdate, parse, utcnow

if TYPE_CHECKING:
    from calsched.backend.faults import FaultPlan

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_backend_app"]

Clock = Callable[[], datetime]
#: Handles a validated request body; returns the JSON answer and extra headers.
Work = Callable[[Any], Awaitable[tuple[dict[str, Any], dict[str, str]]]]

#: Request bodies above this are refused with 413: beats and updates are small.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class _Problem(Exception):
    """An error answer, raised inside a handler and rendered once."""

    def __init__(self, http_status: int, code: str, message: str, **extra: Any) -> None:
        self.http_status = http_status
        self.code = code
        self.message = message
        self.extra = extra
        super().__init__(message)

    def response(self) -> Response:
        body = {"error": self.code, "message": self.message, **self.extra}
        return JSONResponse(body, status_code=self.http_status)


def _problem_for(exc: Exception) -> _Problem:
    """The answer for an error the calendar or the validation raised."""
    if isinstance(exc, _Problem):
        return exc
    if isinstance(exc, InvalidInputError):
        return _Problem(422, "invalid", str(exc))
    if isinstance(exc, SlotNotFoundError):
        return _Problem(404, "not_found", str(exc))
    if isinstance(exc, BackendConflictError):
        return _Problem(409, "conflict", str(exc), status=exc.status, reason=exc.reason)
    if isinstance(exc, JournalError):
        return _Problem(503, "unavailable", "the calendar database cannot be used right now")
    raise exc


def create_backend_app(
    calendar: LocalCalendar,
    api_key: str,
    *,
    faults: FaultPlan | None = None,
    clock: Clock = utcnow,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Starlette:
    """The reference backend for ``calendar``, accepting only ``api_key``.

    ``faults``, when given, is applied by a :class:`~calsched.backend.faults.FaultMiddleware`
    around the app (for tests). Raises :class:`~calsched.errors.ConfigError` for an empty key.
    """
    if not api_key:
        raise ConfigError("the reference backend needs a non-empty API key")
    expected = api_key.encode()

    def authorize(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken must not tell how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise _Problem(401, "unauthorized", "missing or wrong API key")

    async def serve(request: Request, work: Work) -> Response:
        try:
            authorize(request)
            data = await _read_json(request, max_body_bytes)
            payload, headers = await work(data)
        except Exception as exc:  # only our own errors are mapped; others re-raise
            return _problem_for(exc).response()
        return JSONResponse(payload, headers=headers)

    async def heartbeat(data: Any) -> tuple[dict[str, Any], dict[str, str]]:
        beat = parse(HeartbeatRequest, data)
        fired = await run_in_threadpool(calendar.fire_due, beat.identifier, now=clock())
        body = {"slots_to_fire": [s.to_slot().to_wire() for s in fired], "restart_pending": False}
        return body, {}

    async def heartbeat_endpoint(request: Request) -> Response:
        return await serve(request, heartbeat)

    async def status_endpoint(request: Request) -> Response:
        slot_id = request.path_params["slot_id"]
        key = request.headers.get("idempotency-key")

        async def status(data: Any) -> tuple[dict[str, Any], dict[str, str]]:
            if not key:
                raise InvalidInputError("Idempotency-Key", "the header is missing")
            update = parse(SlotUpdate, data)
            outcome = await run_in_threadpool(
                calendar.record_status, slot_id, update, key, now=clock()
            )
            headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
            return {"ok": True, **outcome.receipt.to_wire()}, headers

        return await serve(request, status)

    async def receipts_endpoint(request: Request) -> Response:
        try:
            authorize(request)
            slot_id = request.query_params.get("slot_id")
            found = await run_in_threadpool(calendar.receipts, slot_id)
        except Exception as exc:
            return _problem_for(exc).response()
        return JSONResponse({"receipts": [r.to_wire() for r in found]})

    app = Starlette(
        routes=[
            Route("/v1/heartbeat", heartbeat_endpoint, methods=["POST"]),
            # :path so that an id with an encoded "/" still reaches the handler.
            Route("/v1/slots/{slot_id:path}/status", status_endpoint, methods=["POST"]),
            Route("/v1/receipts", receipts_endpoint, methods=["GET"]),
        ]
    )
    if faults is not None:
        from calsched.backend.faults import FaultMiddleware  # only tests plan faults

        app.add_middleware(FaultMiddleware, plan=faults)
    return app


async def _read_json(request: Request, cap: int) -> Any:
    declared = request.headers.get("content-length")
    body = await read_capped(request.stream(), cap, declared=declared)
    if body is None:
        raise _Problem(413, "too_large", f"the body is over {cap} bytes")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Problem(400, "bad_request", "the body is not JSON") from None
