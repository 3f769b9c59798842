"""A POST's body (step 4 of :mod:`calsched.control`): capped, JSON, typed, bounded.

At most ``max_body`` bytes, counted while it streams in (a ``Content-Length`` is not
trusted), else 413 ``too_large``; a JSON object (400 ``bad_request``; an empty body counts
as ``{}``); fields of the right types, and ``summary``/``reason`` at most ``max_field``
UTF-8 bytes with no NUL character (422 ``invalid``). Unknown fields are ignored.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request

from calsched.bodies import read_capped
from calsched.control.answers import ApiError
from calsched.model import Id, parse


class Body(BaseModel):
    """Every tool call's body: ``slot_id``, if given, fences the call to that slot."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    slot_id: Id | None = None


class CompleteBody(Body):
    """``complete``: an optional summary."""

    summary: str | None = None


class ReasonBody(Body):
    """``abort`` and ``pause``: an optional reason."""

    reason: str | None = None


class DiscardBody(Body):
    """The operator's discard of an outbox row: the reason is required."""

    reason: str


B = TypeVar("B", bound=Body)


class BodyReader:
    """Reads request bodies within one API's limits."""

    def __init__(self, max_body: int, max_field: int) -> None:
        self.max_body = max_body
        self.max_field = max_field

    async def read(self, request: Request) -> bytes:
        """The raw body, at most ``max_body`` bytes; 413 past that."""
        declared = request.headers.get("content-length")
        body = await read_capped(request.stream(), self.max_body, declared=declared)
        if body is None:
            raise ApiError(413, "too_large", f"the body is over {self.max_body} bytes")
        return body

    async def parse(self, request: Request, model: type[B]) -> B:
        """The body as ``model``, its texts checked against ``max_field``."""
        raw = await self.read(request)
        if not raw.strip():
            data: Any = {}
        else:
            try:
                data = json.loads(raw)
            except (ValueError, RecursionError):
                raise ApiError(400, "bad_request", "the body is not JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "bad_request", "the body must be a JSON object")
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
            raise ApiError(422, "invalid", f"{name}: must be valid Unicode") from None
        if "\x00" in value:
            # PostgreSQL text cannot hold NUL: refused here, or the commit fails as a 500.
            raise ApiError(422, "invalid", f"{name}: must not contain NUL characters")
        if size > self.max_field:
            raise ApiError(
                422, "invalid", f"{name}: {size} bytes, at most {self.max_field} allowed"
            )
