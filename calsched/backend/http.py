"""The calendar backend over HTTP (protocol section 1), on :class:`httpx.AsyncClient`.

:class:`HttpBackend` implements :class:`calsched.ports.Backend`. Every answer is
classified into the error tree at this edge, per the protocol's table:

======================================  ============================================
answer                                  raised
======================================  ============================================
200, 202, 204                           nothing (status updates)
409 ``{"status": completed|aborted}``   :class:`~calsched.errors.BackendConflictError`
409 without such a body, 404, 400, 422  :class:`~calsched.errors.BackendRejectedError`
401, 403                                :class:`~calsched.errors.BackendRefusedError`
408, 429, 5xx, network error, timeout   :class:`~calsched.errors.BackendUnavailableError`
======================================  ============================================

Other 4xx answers are rejections (retrying the same request will not help); anything
else unexpected is a passing fault. A heartbeat answer that is not 200, not JSON, not
the protocol's envelope or larger than ``max_response_bytes`` fails the beat with a
:class:`~calsched.errors.BackendError`.

The response body is read as a stream and abandoned as soon as it passes the cap
(``Content-Length`` is only a hint). There is no deadline here: the scheduler bounds
every call (``settings.backend_deadline_s``) around the whole exchange — connect, send,
headers and a body that may drip a byte at a time — by cancelling it, which closes the
stream and its connection.

The API key travels only in the ``Authorization`` header. It is never part of an
exception message, a log line or :func:`repr`.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from calsched._version import __version__
from calsched.bodies import read_capped
from calsched.errors import (
    BackendConflictError,
    BackendError,
    BackendRefusedError,
    BackendRejectedError,
    BackendUnavailableError,
    ConfigError,
    InvalidInputError,
)
from calsched.model import (
    HeartbeatRequest,
    HeartbeatResponse,
    RejectedSlot,
    SlotUpdate,
    parse_heartbeat_response,
)

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "HttpBackend", "parse_retry_after"]

#: The protocol's default cap on a response body.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024

_ACKNOWLEDGED = frozenset({200, 202, 204})
_REJECTED = frozenset({400, 404, 422})
_REFUSED = frozenset({401, 403})
_PASSING = frozenset({408, 429})
_CONFLICT_STATUSES = frozenset({"completed", "aborted"})
# How much of an error body goes into a message: enough to read, never a flood.
_EXCERPT_CHARS = 200


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date).

    Returns ``None`` when the header is absent or unreadable; a date in the past gives 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates parse naive; HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def _check_key(api_key: str) -> None:
    # A key with spaces or control characters would make httpx/h11 raise an error whose
    # text repeats the header value, so it is refused here with a message that does not.
    if not api_key:
        raise ConfigError("the backend API key is empty")
    if not api_key.isascii() or not api_key.isprintable() or any(c.isspace() for c in api_key):
        raise ConfigError(
            "the backend API key must be printable ASCII without spaces (value not shown)"
        )


def _redacted_url(url: httpx.URL) -> str:
    # Credentials in the base URL are as secret as the key.
    if url.userinfo:
        url = url.copy_with(username="***", password=None)
    return str(url)


class HttpBackend:
    """:class:`calsched.ports.Backend` over HTTP/JSON.

    ``transport`` replaces the network (``httpx.MockTransport`` in tests, or an ASGI
    transport); ``plugin_version`` goes into the ``User-Agent`` header. Use as an async
    context manager, or call :meth:`aclose`.

    Raises :class:`~calsched.errors.ConfigError` for a base URL that is not http(s) or an
    API key that cannot be sent in a header.

    Example: ``async with HttpBackend("https://calendar.example", api_key) as backend: ...``
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
        plugin_version: str = __version__,
    ) -> None:
        _check_key(api_key)
        try:
            base = httpx.URL(base_url.rstrip("/"))
        except (httpx.InvalidURL, TypeError):
            raise ConfigError("the backend URL cannot be parsed") from None
        if base.scheme not in ("http", "https") or not base.host:
            raise ConfigError(
                f"the backend URL must be http:// or https:// with a host, not {base.scheme!r}"
            )
        if max_response_bytes <= 0:
            raise ConfigError(f"the response size cap must be positive, not {max_response_bytes!r}")
        if base.query or base.fragment:
            raise ConfigError("the backend URL must not have a query or a fragment")
        # Paths are appended to the text form: a base with a path prefix (/api) keeps it.
        self._root = str(base).rstrip("/")
        self._shown_base = _redacted_url(base)
        self._api_key = api_key
        self.max_response_bytes = max_response_bytes
        self._client = httpx.AsyncClient(
            headers={
                "Authorization": f"Bearer {api_key}",
                "User-Agent": f"calsched/{plugin_version}",
                "Accept": "application/json",
            },
            # None: the scheduler bounds every call (settings.backend_deadline_s) around
            # the whole exchange; httpx's per-read clocks would only bound each read.
            timeout=None,  # noqa: S113 - bounded by the scheduler, see above
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"HttpBackend(base_url={self._shown_base!r})"

    @property
    def base_url(self) -> str:
        """The backend's base URL, with any credentials in it masked."""
        return self._shown_base

    async def __aenter__(self) -> HttpBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections; the backend cannot be used afterwards."""
        await self._client.aclose()

    # -- the two calls ------------------------------------------------------------------

    async def heartbeat(
        self, request: HeartbeatRequest
    ) -> tuple[HeartbeatResponse, list[RejectedSlot]]:
        """``POST /v1/heartbeat``; return the valid slots and the ones skipped as invalid.

        Raises a :class:`~calsched.errors.BackendError` subclass for an error answer, or
        :class:`~calsched.errors.BackendError` itself for a 200 whose body is not JSON,
        not the protocol's envelope, or larger than the cap: the beat fails as a whole.
        """
        what = "heartbeat"
        status, headers, body, too_large = await self._exchange(
            what, "/v1/heartbeat", request.to_wire(), extra_headers={}
        )
        if status != 200:
            raise self._classify(what, status, headers, body, too_large)
        if too_large:
            raise BackendError(
                f"{what}: the answer is larger than the {self.max_response_bytes}-byte cap",
                status_code=status,
            )
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise BackendError(
                f"{what}: the answer is not JSON ({type(exc).__name__} at {_where(exc)})",
                status_code=status,
            ) from None
        try:
            return parse_heartbeat_response(data)
        except InvalidInputError as exc:
            raise BackendError(
                f"{what}: the answer is not a heartbeat response: {exc.field}: {exc.problem}",
                status_code=status,
            ) from None

    async def send_status(self, slot_id: str, update: SlotUpdate, idempotency_key: str) -> None:
        """``POST /v1/slots/{slot_id}/status`` with ``Idempotency-Key``; return on 2xx ack.

        Raises :class:`~calsched.errors.BackendConflictError` (409 with a terminal status),
        :class:`~calsched.errors.BackendRejectedError`,
        :class:`~calsched.errors.BackendRefusedError` or
        :class:`~calsched.errors.BackendUnavailableError` per the protocol's table.
        """
        if not idempotency_key or not idempotency_key.isascii():
            raise BackendRejectedError(
                f"status of slot {slot_id!r}: the idempotency key must be non-empty ASCII"
            )
        what = f"status of slot {slot_id!r}"
        path = f"/v1/slots/{quote(slot_id, safe='')}/status"
        status, headers, body, too_large = await self._exchange(
            what, path, update.to_wire(), extra_headers={"Idempotency-Key": idempotency_key}
        )
        if status in _ACKNOWLEDGED:
            return
        if status == 409:
            conflict = None if too_large else _conflict_body(body)
            if conflict is not None:
                held, reason = conflict
                raise BackendConflictError(
                    f"{what}: the backend already holds {held!r}"
                    + (f" (reason: {self._scrub(reason)})" if reason else ""),
                    status=held,
                    reason=reason,
                )
        raise self._classify(what, status, headers, body, too_large)

    # -- one exchange -------------------------------------------------------------------

    async def _exchange(
        self, what: str, path: str, payload: dict[str, Any], *, extra_headers: dict[str, str]
    ) -> tuple[int, httpx.Headers, bytes, bool]:
        """POST ``payload``; return (status, headers, body up to the cap, body too large).

        Transport failures become BackendUnavailableError here. Unbounded: the caller's
        deadline cancels it, and leaving the ``stream`` block closes the connection.
        """
        url = httpx.URL(self._root + path)
        try:
            async with self._client.stream(
                "POST", url, json=payload, headers=extra_headers
            ) as response:
                body, too_large = await self._read_capped(response)
                return response.status_code, response.headers, body, too_large
        except httpx.TimeoutException as exc:
            raise BackendUnavailableError(
                f"{what}: timed out ({type(exc).__name__})"
            ) from self._safe_cause(exc)
        except httpx.HTTPError as exc:
            detail = self._scrub(str(exc)) or "no detail"
            raise BackendUnavailableError(
                f"{what}: {self._shown_base} unreachable ({type(exc).__name__}: {detail})"
            ) from self._safe_cause(exc)

    async def _read_capped(self, response: httpx.Response) -> tuple[bytes, bool]:
        """Read the body up to the cap; stop (without reading on) once it is passed."""
        declared = response.headers.get("Content-Length")
        # Leaving the stream unread closes the connection: the rest is never read.
        body = await read_capped(response.aiter_bytes(), self.max_response_bytes, declared=declared)
        return (b"", True) if body is None else (body, False)

    # -- classification -----------------------------------------------------------------

    def _classify(
        self, what: str, status: int, headers: httpx.Headers, body: bytes, too_large: bool
    ) -> BackendError:
        """The error for a non-acknowledging answer, per the protocol's table."""
        excerpt = "" if too_large else self._excerpt(body)
        said = f"{what}: the backend answered {status}" + (f": {excerpt}" if excerpt else "")
        if status in _REFUSED:
            return BackendRefusedError(f"{said} (the API key is refused)", status_code=status)
        if status in _PASSING or 500 <= status <= 599:
            return BackendUnavailableError(
                said,
                status_code=status,
                retry_after=parse_retry_after(headers.get("Retry-After")),
            )
        if status in _REJECTED or status == 409 or 400 <= status <= 499:
            return BackendRejectedError(said, status_code=status)
        # 1xx/3xx or a 2xx where another was due: not the protocol; try again later.
        return BackendUnavailableError(f"{said} (unexpected)", status_code=status)

    def _excerpt(self, body: bytes) -> str:
        text = body[: _EXCERPT_CHARS * 4].decode("utf-8", "replace")
        text = " ".join(text.split())
        if len(text) > _EXCERPT_CHARS:
            text = text[:_EXCERPT_CHARS] + "…"
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        # A backend (or a proxy) may echo request headers; the key never leaves this object.
        return text.replace(self._api_key, "***")

    def _safe_cause(self, exc: BaseException) -> BaseException | None:
        # Chain the foreign error for debugging unless its own text would show the key.
        return None if self._api_key in str(exc) else exc


def _where(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"char {exc.pos}"
    if isinstance(exc, UnicodeDecodeError):
        return f"byte {exc.start}"
    if isinstance(exc, RecursionError):
        return "a depth Python cannot parse"
    return "?"


def _conflict_body(body: bytes) -> tuple[str, str | None] | None:
    """``(status, reason)`` from a 409 body, or ``None`` if it is not the protocol's."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None  # too deep to parse is not the protocol's body either
    if not isinstance(data, dict):
        return None
    status = data.get("status")
    reason = data.get("reason")
    if status not in _CONFLICT_STATUSES:
        return None
    return str(status), reason if isinstance(reason, str) else None
