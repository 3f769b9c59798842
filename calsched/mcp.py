"""The agents' tools over the Model Context Protocol: ``calsched mcp --agent ID``.

An MCP server (the official ``mcp`` SDK's :class:`~mcp.server.MCPServer`) for one agent,
on stdio or, by flag, streamable HTTP on loopback. Each tool is one call to the running
daemon's control API (protocol section 2) with that agent's token, so the daemon
authorises it as that agent alone and journals it like any other call; this process keeps
no state of its own and needs no database.

Retries are safe: every state-changing tool call sends one ``Idempotency-Key`` and reuses
it when this server retries a request whose answer it did not get (connection refused or
reset, timeout, 503). When even the retries get no answer, the outcome is unknown: the
key is kept for that exact call (tool and arguments), so when the agent calls again with
the same arguments the daemon answers as it did the first time instead of completing a
second slot. A definite answer (success or a refusal) forgets the key.

Traces: a tool call whose MCP request carries W3C trace context in its ``_meta``
(``traceparent``, ``tracestate``: the mcp SDK's own server span makes it current) sends it
on as headers of its control API call, so the daemon's spans continue the caller's trace;
a request without it sends the process's ``TRACEPARENT``/``TRACESTATE`` environment
(:func:`env_trace`) instead, if the host that started this server set one.

Every failure reaches the model as a tool error it can act on ("you have no active
slot", "your slot is paused; resume it first", "that slot is no longer yours"), never as
a crash of the server. The token comes from the environment (``CALSCHED_TOKEN``) or a
file, never from a command-line flag (flags show in ``ps``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import Field

from calsched._version import __version__
from calsched.model import MAX_ID_CHARS
from calsched.status import AgentStatus, SlotEntry

__all__ = ["ControlClient", "build_server", "claimed_agent", "env_trace"]

log = logging.getLogger("calsched.mcp")

#: Requests tried per tool call before the outcome is called unknown.
ATTEMPTS = 3
#: Seconds before the second and third try (a daemon restart takes about that long).
BACKOFF_S = (0.5, 1.5)
#: How long one request to the daemon may take.
REQUEST_TIMEOUT_S = 10.0

_B64URL = re.compile(r"[A-Za-z0-9_-]+")
#: W3C trace context only (no baggage): what a control API call carries on.
_W3C = TraceContextTextMapPropagator()


def env_trace(environ: Mapping[str, str]) -> dict[str, str]:
    """The W3C trace context in ``TRACEPARENT`` (and ``TRACESTATE``) as headers, checked
    and normalised; ``{}`` when it is missing or not a valid ``traceparent``."""
    carrier = {"traceparent": environ.get("TRACEPARENT", "").strip()}
    if environ.get("TRACESTATE"):
        carrier["tracestate"] = environ["TRACESTATE"].strip()
    out: dict[str, str] = {}
    _W3C.inject(out, context=_W3C.extract(carrier))
    return out


def _current_trace() -> dict[str, str]:
    """The trace context the current MCP request made current (from its ``_meta``)."""
    out: dict[str, str] = {}
    _W3C.inject(out)
    return out


SlotIdArg = Annotated[
    str | None,
    Field(
        description="The id of the slot you mean (from calendar_slot). Optional; when given, "
        "the call is refused instead of acting on a different slot if that one is no "
        "longer your current slot. Pass it whenever you know it.",
        max_length=MAX_ID_CHARS,
    ),
]

_INSTRUCTIONS = """\
Tools over your own schedule in calsched. The calendar wakes you for a slot (a piece of
work with a title and a prompt); while you work on it the slot is in_progress. When you
are done call calendar_complete with a short summary; if you cannot do it, call
calendar_abort with the reason; if you must wait (for a person, for data), call
calendar_pause with the reason and calendar_resume when you continue. calendar_slot
shows the slot you are working on, calendar_status your current slot and your recent
ones. Calls are safe to repeat: calling again after a timeout never completes twice."""


def claimed_agent(token: str) -> str | None:
    """The agent id an agent token names (unverified: only the daemon can check the MAC);
    ``None`` for the admin token or anything that is not an agent token."""
    import base64
    import binascii

    prefix, _, rest = token.partition(".")
    encoded, sep, _mac = rest.partition(".")
    if prefix != "agent" or not sep or not _B64URL.fullmatch(encoded):
        return None
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        return raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None


class _Unreachable(Exception):
    """No answer from the daemon after every try: the call's outcome is unknown."""


@dataclass
class ControlClient:
    """The control API as one agent sees it (its token, its routes), with retries.

    ``transport`` is for tests (an ASGI app in-process); a real server talks TCP.
    """

    base_url: str
    agent_id: str
    token: str = field(repr=False)
    transport: httpx.AsyncBaseTransport | None = None
    attempts: int = ATTEMPTS
    backoff_s: tuple[float, ...] = BACKOFF_S
    #: Keys of calls whose outcome is unknown, by (tool, arguments): reused on a repeat.
    unsettled: dict[str, str] = field(default_factory=dict)
    #: Trace context for calls whose MCP request carried none (:func:`env_trace`).
    trace: Mapping[str, str] = field(default_factory=dict)

    def _path(self, tail: str) -> str:
        return f"/v1/agents/{quote(self.agent_id, safe='')}/{tail}"

    async def get(self, tail: str) -> httpx.Response:
        """``GET /v1/agents/<id>/<tail>``, retried while there is no answer."""
        return await self._send("GET", self._path(tail), None, {})

    async def post(self, tool: str, action: str, body: Mapping[str, Any]) -> httpx.Response:
        """``POST /v1/agents/<id>/slot/<action>`` under one key, reused on every retry and
        on a repeat of the same call after an unknown outcome."""
        call = json.dumps([tool, dict(body)], sort_keys=True)
        key = self.unsettled.get(call) or str(uuid.uuid4())
        try:
            response = await self._send(
                "POST", self._path(f"slot/{action}"), body, {"Idempotency-Key": key}
            )
        except _Unreachable:
            self.unsettled[call] = key
            raise
        self.unsettled.pop(call, None)
        return response

    async def _send(
        self, method: str, path: str, body: Mapping[str, Any] | None, headers: dict[str, str]
    ) -> httpx.Response:
        trace = _current_trace() or self.trace
        headers = {**trace, **headers, "Authorization": f"Bearer {self.token}"}
        cause = "no answer"
        async with httpx.AsyncClient(
            base_url=self.base_url, transport=self.transport, timeout=REQUEST_TIMEOUT_S
        ) as http:
            for attempt in range(self.attempts):
                if attempt:
                    await asyncio.sleep(self.backoff_s[min(attempt, len(self.backoff_s)) - 1])
                try:
                    response = await http.request(method, path, json=body, headers=headers)
                except httpx.TransportError as exc:  # refused, reset, timed out
                    cause = type(exc).__name__
                    continue
                if response.status_code != 503:  # 503: the daemon is stepping down or busy
                    return response
                cause = "HTTP 503"
        log.warning("control API %s %s: no answer after %d tries", method, path, self.attempts)
        raise _Unreachable(cause)


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        return str(data.get("error", "")), str(data.get("message", ""))
    return "", f"HTTP {response.status_code}"


class _Tools:
    """The tool bodies: one control API call each, every failure a :class:`ToolError`."""

    def __init__(self, client: ControlClient) -> None:
        self.client = client

    async def _call(self, tool: str, response_of: Any, *, changes: bool = False) -> dict[str, Any]:
        try:
            response: httpx.Response = await response_of
        except _Unreachable as exc:
            if not changes:
                raise ToolError(
                    f"The calendar daemon did not answer ({exc}); calsched run may be "
                    "stopped or restarting. Try again in a moment."
                ) from None
            raise ToolError(
                f"The calendar daemon did not answer ({exc}); the outcome is unknown. Call "
                "the same tool again with the same arguments: a repeat is safe and answers "
                "as the first call did. If this persists, calsched run may be stopped."
            ) from None
        if response.is_success:
            data: dict[str, Any] = response.json()
            return data
        raise await self._refusal(tool, response)

    async def _refusal(self, tool: str, response: httpx.Response) -> ToolError:
        code, message = _error_of(response)
        agent = self.client.agent_id
        if code == "no_active_slot":
            return ToolError(
                "You have no active slot: there is nothing to complete, abort, pause or "
                "resume. Call calendar_status to see your recent slots."
            )
        if code == "stale_slot":
            return ToolError(
                f"That slot is no longer yours ({message}). Call calendar_slot to see your "
                "current slot, and act on it only if it is the work you mean."
            )
        if code == "invalid_transition":
            return ToolError(await self._why_not(tool, message))
        if code == "unauthorized":
            return ToolError(
                f"The calendar refused this server's token for agent {agent!r}: the token "
                "is not valid for the running daemon (made under another secret?). Ask the "
                "operator for a new one: calsched token --agent ID."
            )
        if code == "forbidden":
            return ToolError(
                f"This server's token belongs to another agent, not {agent!r}; it may act "
                "only on its own agent's slots. Ask the operator to fix the configuration."
            )
        if code == "invalid":
            return ToolError(f"The calendar refused the arguments: {message}")
        log.error("control API answered %s %s", response.status_code, code or "(no code)")
        return ToolError(
            f"The calendar daemon failed on this call ({code or response.status_code}); "
            "nothing was changed. Try again later."
        )

    async def _why_not(self, tool: str, message: str) -> str:
        """A refused transition, said in terms of the slot's state now."""
        try:
            response = await self.client.get("slot")
        except _Unreachable:
            response = None
        state = None
        if response is not None and response.is_success:
            state = response.json().get("state")
        if state == "paused" and tool == "calendar_pause":
            return "Your slot is already paused; call calendar_resume when you continue."
        if state == "paused":
            return "Your slot is paused; resume it first (calendar_resume)."
        if state == "in_progress":
            return "Your slot is in progress, not paused: there is nothing to resume."
        if state == "dispatching":
            return "Your slot is still being started; try again in a moment."
        return f"The calendar refused this change: {message}."

    async def status(self) -> AgentStatus:
        data = await self._call("calendar_status", self.client.get("status"))
        return AgentStatus.model_validate(data)

    async def slot(self) -> SlotEntry:
        return SlotEntry.model_validate(await self._call("calendar_slot", self.client.get("slot")))

    async def act(self, tool: str, action: str, body: dict[str, Any]) -> SlotEntry:
        fields = {k: v for k, v in body.items() if v is not None}
        data = await self._call(tool, self.client.post(tool, action, fields), changes=True)
        return SlotEntry.model_validate(data)


def build_server(client: ControlClient) -> MCPServer:
    """The MCP server of one agent's tools, each a call through ``client``."""
    tools = _Tools(client)
    server: MCPServer = MCPServer(name="calsched", version=__version__, instructions=_INSTRUCTIONS)
    read_only = ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False)
    changes = ToolAnnotations(readOnlyHint=False, idempotentHint=True, openWorldHint=False)

    @server.tool(annotations=read_only)
    async def calendar_status() -> AgentStatus:
        """Your calendar status: the slot you are working on now ("current", null if
        none, with its state: dispatching, in_progress or paused), slots of yours waiting
        their turn, and your recently finished slots (completed or aborted, newest first,
        with their summary or reason). Use it to orient yourself; it changes nothing."""
        return await tools.status()

    @server.tool(annotations=read_only)
    async def calendar_slot() -> SlotEntry:
        """The slot you are working on now: its id, title and prompt (what to do), its
        state (in_progress or paused) and attempt. Fails with "you have no active slot"
        if there is none. It changes nothing."""
        return await tools.slot()

    @server.tool(annotations=changes)
    async def calendar_complete(
        summary: Annotated[
            str,
            Field(
                description="What you did, in a sentence or two, for the people who read "
                "the calendar.",
                max_length=8192,
            ),
        ],
        slot_id: SlotIdArg = None,
    ) -> SlotEntry:
        """Mark your current slot as done, with a summary of what you did. Call it once
        the work is finished (a paused slot can be completed too). Answers the slot, now
        completed. Safe to repeat after a timeout: it never completes twice."""
        return await tools.act(
            "calendar_complete", "complete", {"summary": summary, "slot_id": slot_id}
        )

    @server.tool(annotations=changes)
    async def calendar_abort(
        reason: Annotated[
            str,
            Field(
                description="Why the slot cannot be done, so a person can act on it.",
                max_length=8192,
            ),
        ],
        slot_id: SlotIdArg = None,
    ) -> SlotEntry:
        """Give up your current slot, with the reason. Use it when the work cannot be
        done (missing input, an error you cannot fix); it ends the slot for good. Answers
        the slot, now aborted."""
        return await tools.act("calendar_abort", "abort", {"reason": reason, "slot_id": slot_id})

    @server.tool(annotations=changes)
    async def calendar_pause(
        reason: Annotated[
            str,
            Field(description="What you are waiting for.", max_length=8192),
        ],
        slot_id: SlotIdArg = None,
    ) -> SlotEntry:
        """Pause your current slot while you wait (for a person, for data), with the
        reason. The slot stays yours; call calendar_resume when you continue. Answers the
        slot, now paused."""
        return await tools.act("calendar_pause", "pause", {"reason": reason, "slot_id": slot_id})

    @server.tool(annotations=changes)
    async def calendar_resume(slot_id: SlotIdArg = None) -> SlotEntry:
        """Continue your paused slot. Answers the slot, in progress again. Fails if your
        slot is not paused."""
        return await tools.act("calendar_resume", "resume", {"slot_id": slot_id})

    return server
