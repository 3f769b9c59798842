"""A host that takes wakes over HTTP (protocol section 3), on ``httpx.AsyncClient``.

Also home of :func:`parse_agent_list`, the ``{"agents": [...]}`` document of section 3,
which :class:`~calsched.host.command.CommandHost` reads from its list program too.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import ValidationError

from calsched.bodies import read_capped
from calsched.errors import ConfigError, WakeFailedError
from calsched.model import AgentReport, first_error
from calsched.ports import WakeRequest

__all__ = ["MAX_AGENT_LIST_BYTES", "WebhookHost", "parse_agent_list"]

log = logging.getLogger("calsched.host")

#: An agent list larger than this is refused: it is a few lines per agent, not megabytes.
MAX_AGENT_LIST_BYTES = 1024 * 1024
_CAUSE_CHARS = 200


def parse_agent_list(data: Any, *, origin: str) -> list[AgentReport]:
    """The valid agents of an ``{"agents": [...]}`` document; invalid entries are skipped.

    Each skipped entry is logged with ``origin`` (where the list came from). A document that
    is not an object with an ``agents`` list gives ``[]`` and a log line: a bad agent list
    must not fail the heartbeat that carries it.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("agents"), list):
        log.warning("%s: agent list is not an object with an 'agents' list; ignored", origin)
        return []
    agents: list[AgentReport] = []
    for index, raw in enumerate(data["agents"]):
        try:
            agents.append(AgentReport.model_validate(raw))
        except ValidationError as exc:
            error = first_error(exc)
            where = error.field or "(entry)"
            log.warning("%s: skipped agents[%d]: %s: %s", origin, index, where, error.message)
    return agents


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _CAUSE_CHARS else text[: _CAUSE_CHARS - 1] + "…"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _transport_cause(exc: httpx.TransportError) -> str:
    """A short cause for a network failure; httpx's own text never holds our headers."""
    # httpx says "All connection attempts failed"; the OS error underneath says why.
    chain = _chain(exc)
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused"
    if any(isinstance(e, socket.gaierror) for e in chain):
        return "cannot resolve the host name"
    detail = str(exc)
    if isinstance(exc, httpx.ConnectError):
        if "refused" in detail.lower():
            return "connection refused"
        return _short(f"connection failed: {detail}") if detail else "connection failed"
    name = type(exc).__name__
    return _short(f"{name}: {detail}") if detail else name


def _checked_url(url: str, what: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"{what} is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"{what} must be an http:// or https:// URL with a host")
    return parsed


class WebhookHost:
    """Wakes agents by ``POST wake_url`` and lists them by ``GET agents_url``.

    Any 2xx answer to a wake means the host accepted it. A non-2xx answer or a network
    error raises :class:`~calsched.errors.WakeFailedError` with a short cause such as
    ``HTTP 503`` or ``connection refused``. There is no deadline here: the scheduler bounds
    every call (``settings.wake_timeout_s``) by cancelling it, which closes the stream.
    Redirects are not followed: a 3xx is a failed wake, and the token stays with the
    configured URL. With tracing on, a wake carries ``traceparent`` (and ``tracestate``).
    ``transport`` is for tests (``httpx.MockTransport``).
    """

    def __init__(
        self,
        wake_url: str,
        *,
        agents_url: str | None = None,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._wake_url = _checked_url(wake_url, "wake_url")
        self._agents_url = None if agents_url is None else _checked_url(agents_url, "agents_url")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # Kept private and only ever sent as a header: it is in no repr, log or error.
        self._headers = headers
        # timeout=None: the scheduler bounds every call (settings.wake_timeout_s), so a
        # second, per-read clock here would only give the same failure another message.
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=None,  # noqa: S113 - bounded by the scheduler, see above
            follow_redirects=False,
        )

    @property
    def target(self) -> str:
        """Where wakes go, for log lines: the wake URL without credentials or query."""
        return f"webhook {_redacted(self._wake_url)}"

    def __repr__(self) -> str:
        token = "set" if "Authorization" in self._headers else "none"
        return (
            f"WebhookHost(wake_url={_redacted(self._wake_url)!r}, "
            f"agents_url={_redacted(self._agents_url)!r}, token={token})"
        )

    async def wake_agent(self, request: WakeRequest) -> None:
        """POST the wake; return on 2xx, else raise :class:`WakeFailedError`."""
        try:
            # Streamed and never read: the host's answer is its status code alone.
            # The wake's trace context goes with it (W3C trace context), for the host.
            headers = {**request.trace, **self._headers} if request.trace else self._headers
            async with self._client.stream(
                "POST", self._wake_url, json=request.to_wire(), headers=headers
            ) as response:
                status = response.status_code
        except httpx.TransportError as exc:
            raise WakeFailedError(request.agent_id, _transport_cause(exc)) from exc
        if not 200 <= status < 300:
            raise WakeFailedError(request.agent_id, f"HTTP {status}")

    async def list_agents(self) -> list[AgentReport]:
        """The host's agents from ``GET agents_url``; ``[]`` without it or on any failure."""
        if self._agents_url is None:
            return []
        try:
            body = await self._fetch_agents(self._agents_url)
        except httpx.TransportError as exc:
            log.warning("listing agents failed: %s", _transport_cause(exc))
            return []
        if body is None:
            return []
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            log.warning("listing agents failed: the answer is not JSON")
            return []
        return parse_agent_list(data, origin="agents_url")

    async def _fetch_agents(self, url: httpx.URL) -> bytes | None:
        async with self._client.stream("GET", url, headers=self._headers) as response:
            if response.status_code != 200:
                log.warning("listing agents failed: HTTP %d", response.status_code)
                return None
            declared = response.headers.get("Content-Length")
            body = await read_capped(
                response.aiter_bytes(), MAX_AGENT_LIST_BYTES, declared=declared
            )
            if body is None:
                log.warning("listing agents failed: answer over %d bytes", MAX_AGENT_LIST_BYTES)
            return body

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.aclose()


def _redacted(url: httpx.URL | None) -> str | None:
    # A URL may carry credentials (user:password@); they are no more printable than the token.
    if url is None:
        return None
    return str(url.copy_with(username=None, password=None, query=None))
