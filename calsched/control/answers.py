"""The control API's answers other than 2xx: the error body, and the protocol's code for
each error of the tools (``no_active_slot`` 404, ``stale_slot`` 409, …).

Every route runs inside :func:`endpoint`, so any failure below it becomes the protocol's
``{"error": code, "message": text}``; an unexpected one is 500 ``internal`` with a fixed
message, its details only in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from calsched.errors import (
    CalschedError,
    InvalidInputError,
    InvalidTransitionError,
    JournalUnavailableError,
    LeaseLostError,
    NoActiveSlotError,
    OutboxRowNotFoundError,
    StaleSlotError,
)
from calsched.model import SlotView
from calsched.status import SlotEntry

# The package's one logger: every module of the control API logs as calsched.control.
log = logging.getLogger("calsched.control")

#: A route handler.
Endpoint = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    """An answer other than 2xx, raised anywhere below an endpoint."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        super().__init__(message)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The protocol's error body, ``{"error": code, "message": message}``."""
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def mapped(exc: CalschedError) -> ApiError | None:
    """The protocol's answer for an error of the tools; ``None`` for an internal one."""
    if isinstance(exc, NoActiveSlotError):
        return ApiError(404, "no_active_slot", str(exc))
    if isinstance(exc, StaleSlotError):
        return ApiError(409, "stale_slot", str(exc))
    if isinstance(exc, InvalidTransitionError):
        return ApiError(409, "invalid_transition", str(exc))
    if isinstance(exc, InvalidInputError):
        return ApiError(422, "invalid", str(exc))
    if isinstance(exc, OutboxRowNotFoundError):
        return ApiError(
            409 if exc.settled else 404, "settled" if exc.settled else "not_found", str(exc)
        )
    if isinstance(exc, LeaseLostError):
        # Nothing was committed: the daemon is stepping down; ask the new holder.
        return ApiError(503, "lease_lost", str(exc))
    if isinstance(exc, JournalUnavailableError):
        # Nothing was committed; the client may retry. The journal writer logs the cause
        # once per episode, so this answer is not logged again per call.
        return ApiError(503, "journal_unavailable", f"{exc}; try again later", {"Retry-After": "5"})
    return None


def endpoint(handler: Endpoint) -> Endpoint:
    """Turn every failure of ``handler`` into the protocol's error body."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.headers)
        except CalschedError as exc:
            api = mapped(exc)
            if api is not None:
                return error_response(api.status, api.code, api.message, api.headers)
            log.error("control API: %s %s failed: %s", request.method, request.url.path, exc)
            return error_response(500, "internal", "internal error; see the calsched log")
        except Exception:
            # The traceback goes to the log only; the client learns nothing of our insides.
            log.exception("control API: %s %s failed", request.method, request.url.path)
            return error_response(500, "internal", "internal error; see the calsched log")

    return run


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in the protocol's error shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


def slot_answer(view: SlotView) -> Response:
    """One slot, as the protocol answers for it: its :class:`SlotEntry`."""
    return JSONResponse(SlotEntry.from_view(view).to_wire())
