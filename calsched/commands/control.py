"""The agents' tools and the daemon's status, through the control API (protocol section 2).

``slot``, ``complete``, ``abort``, ``pause`` and ``resume`` send the agent token
(``CALSCHED_TOKEN``, else computed from the control secret file), or with
``--as-operator`` the admin token (the journal then records actor ``operator``: an
operator acting on the agent's slot); ``status`` sends the admin token. A protocol
error (``{"error": ..., "message": ...}``) or no answer at all ends the command with one
``error:`` line and status 1. ``token`` prints tokens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

import typer

from calsched.commands.common import (
    EXIT_USAGE,
    AgentOption,
    JsonOption,
    config_of,
    console,
    fail,
    iso,
    print_json,
    short_time,
)
from calsched.commands.listing import (
    DEFAULT_LIMIT,
    field_cell,
    note_cell,
    note_shown,
    print_table,
    time_cell,
)
from calsched.config import Config

__all__ = ["TOKEN_ENV", "abort", "complete", "pause", "resume", "slot", "status", "token"]

#: The agent token an agent's tool calls use, when set (else computed from the secret).
TOKEN_ENV = "CALSCHED_TOKEN"  # noqa: S105 - the name of a variable, not a secret


def _secret(cfg: Config, *, create: bool) -> bytes:
    from calsched.tokens import load_or_create_secret

    path = cfg.control.secret_file.expanduser()
    if not create and not path.exists():
        fail(
            f"no control secret at {path}: start `calsched run` first "
            f"(or set {TOKEN_ENV} to an agent token)"
        )
    return load_or_create_secret(path)


def token(
    ctx: typer.Context,
    agent: Annotated[
        str | None, typer.Option("--agent", "-a", metavar="ID", help="Print this agent's token.")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Print the admin token.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Print a bearer token for the control API (makes the secret file if missing).

    Refused when the secret file is missing but a daemon answers on the control port:
    that daemon uses another secret file, and a new secret's tokens would be refused.

    Example: calsched token --agent bob
    """
    from calsched.tokens import admin_token, agent_token

    if (agent is None) == (not admin):
        fail("give exactly one of --agent ID or --admin", EXIT_USAGE)
    cfg = config_of(ctx)
    _refuse_a_second_secret(cfg)
    secret = _secret(cfg, create=True)
    value = admin_token(secret) if admin else agent_token(secret, agent or "")
    if as_json:
        print_json({"agent": None if admin else agent, "admin": admin, "token": value})
        return
    typer.echo(value)


def _refuse_a_second_secret(cfg: Config) -> None:
    """No secret file here, yet a daemon answers on the control port: it runs with
    another secret file (another HOME, another config). A new secret would print tokens
    that daemon refuses, so none is made."""
    import httpx

    path = cfg.control.secret_file.expanduser()
    if path.exists():
        return
    try:
        answer = httpx.get(f"{cfg.control.url}/healthz", timeout=3.0)
        running = answer.status_code == 200 and answer.json() == {"ok": True}
    except (httpx.HTTPError, ValueError):
        return
    if running:
        fail(
            f"no control secret at {path}, but a calsched daemon answers at "
            f"{cfg.control.url}: it uses another secret file; set CALSCHED_CONTROL__SECRET_FILE "
            "(or control.secret_file) to the daemon's instead of making a new secret"
        )


def _control_call(
    cfg: Config, method: str, path: str, bearer: str, body: Mapping[str, Any] | None = None
) -> Any:
    """One control API request; a protocol error or no answer ends the command (exit 1)."""
    import httpx

    url = cfg.control.url
    try:
        with httpx.Client(base_url=url, timeout=30.0) as client:
            response = client.request(
                method, path, json=body, headers={"Authorization": f"Bearer {bearer}"}
            )
    except httpx.ConnectError:
        fail(f"cannot reach the control API at {url}: is `calsched run` running?")
    except httpx.TimeoutException:
        fail(f"the control API at {url} did not answer in time")
    except httpx.HTTPError as exc:
        fail(f"control API request failed: {type(exc).__name__}")
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.is_success:
        return data
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return fail(f"{data['message']} ({data.get('error', 'error')})")
    return fail(f"the control API answered HTTP {response.status_code}")


def _agent_bearer(cfg: Config, agent_id: str) -> str:
    from calsched.tokens import agent_token

    given = os.environ.get(TOKEN_ENV)
    if given:
        return given
    return agent_token(_secret(cfg, create=False), agent_id)


def _agent_tool(
    ctx: typer.Context,
    agent_id: str,
    action: str | None,
    body: Mapping[str, Any] | None,
    as_json: bool,
    *,
    operator: bool = False,
) -> None:
    from calsched.tokens import admin_token

    cfg = config_of(ctx)
    path = f"/v1/agents/{quote(agent_id, safe='')}/slot"
    if action is not None:
        path += f"/{action}"
    method = "GET" if action is None else "POST"
    # The operator speaks with the admin token, so the journal records who really acted.
    bearer = admin_token(_secret(cfg, create=False)) if operator else _agent_bearer(cfg, agent_id)
    data = _control_call(cfg, method, path, bearer, body)
    if as_json:
        print_json(data)
        return
    _print_slot(data)


def _print_slot(data: Any) -> None:
    if not isinstance(data, Mapping):
        print_json(data)
        return
    slot = data.get("slot") or {}
    line = f"slot {slot.get('id')} of agent {slot.get('agent_id')}: {data.get('state')}"
    line += f" (attempt {data.get('attempt')})"
    typer.echo(line)
    for key in ("title", "prompt_text"):
        if slot.get(key):
            typer.echo(f"  {key}: {slot[key]}")
    for key in ("started_at", "last_change", "summary", "reason"):
        if data.get(key):
            typer.echo(f"  {key}: {data[key]}")


def _body(**fields: str | None) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


OperatorOption = Annotated[
    bool,
    typer.Option(
        "--as-operator",
        help="Act as the operator (admin token from the secret file); journaled as operator.",
    ),
]

SlotIdOption = Annotated[
    str | None,
    typer.Option(
        "--slot", metavar="ID", help="The slot you mean; refused if it is not the current one."
    ),
]


def slot(ctx: typer.Context, agent: AgentOption, as_json: JsonOption = False) -> None:
    """Show the agent's current slot (control API).

    Example: calsched slot --agent bob
    """
    _agent_tool(ctx, agent, None, None, as_json)


def complete(
    ctx: typer.Context,
    agent: AgentOption,
    summary: Annotated[str | None, typer.Option(help="What was done.")] = None,
    slot_id: SlotIdOption = None,
    as_operator: OperatorOption = False,
    as_json: JsonOption = False,
) -> None:
    """Complete the agent's current slot (control API).

    Example: calsched complete --agent bob --summary "report sent"
    """
    _agent_tool(
        ctx,
        agent,
        "complete",
        _body(summary=summary, slot_id=slot_id),
        as_json,
        operator=as_operator,
    )


def abort(
    ctx: typer.Context,
    agent: AgentOption,
    reason: Annotated[str | None, typer.Option(help="Why the slot is given up.")] = None,
    slot_id: SlotIdOption = None,
    as_operator: OperatorOption = False,
    as_json: JsonOption = False,
) -> None:
    """Abort the agent's current slot (control API).

    Example: calsched abort --agent bob --reason "source data missing"
    """
    _agent_tool(
        ctx, agent, "abort", _body(reason=reason, slot_id=slot_id), as_json, operator=as_operator
    )


def pause(
    ctx: typer.Context,
    agent: AgentOption,
    reason: Annotated[str | None, typer.Option(help="Why the slot waits.")] = None,
    slot_id: SlotIdOption = None,
    as_operator: OperatorOption = False,
    as_json: JsonOption = False,
) -> None:
    """Pause the agent's current slot (control API).

    Example: calsched pause --agent bob --reason "waiting for review"
    """
    _agent_tool(
        ctx, agent, "pause", _body(reason=reason, slot_id=slot_id), as_json, operator=as_operator
    )


def resume(
    ctx: typer.Context,
    agent: AgentOption,
    slot_id: SlotIdOption = None,
    as_operator: OperatorOption = False,
    as_json: JsonOption = False,
) -> None:
    """Resume the agent's paused slot (control API).

    Example: calsched resume --agent bob
    """
    _agent_tool(ctx, agent, "resume", _body(slot_id=slot_id), as_json, operator=as_operator)


def status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The running daemon's status (control API, admin token from the secret file).

    Example: calsched status --json
    """
    from calsched.tokens import admin_token

    cfg = config_of(ctx)
    data = _control_call(cfg, "GET", "/v1/status", admin_token(_secret(cfg, create=False)))
    if as_json:
        print_json(data)
        return
    _print_status(data)


def _print_status(data: Any) -> None:
    from calsched.errors import InvalidInputError
    from calsched.model import parse
    from calsched.status import SchedulerStatus

    try:
        status = parse(SchedulerStatus, data)
    except InvalidInputError as exc:
        fail(f"the daemon's status is not in the expected shape: {exc}")
    out = console()
    backend, outbox = status.backend, status.outbox
    out.print(
        f"identifier {status.identifier}  enabled {status.enabled}  "
        f"heartbeat every {status.heartbeat_every_s:g}s, last {_when(status.last_heartbeat)}"
    )
    refused = "  KEY REFUSED" if backend.key_refused else ""
    out.print(f"backend last ok {_when(backend.last_ok)}  last error {backend.last_error}{refused}")
    out.print(
        f"outbox pending {outbox.pending}  dead {outbox.dead}  "
        f"restart pending {status.restart_pending}"
    )
    if outbox.dead_slots:
        # The first few slots by id: `outbox list --dead` shows every row.
        out.print(f"dead-lettered: {', '.join(outbox.dead_slots)} (`calsched outbox list --dead`)")
    lease = status.lease
    if lease is not None:
        lost = f"  LOST: {lease.lost}" if lease.lost else ""
        out.print(
            f"lease epoch {lease.epoch}  held by {lease.host} pid {lease.pid} "
            f"since {_when(lease.since)}  expires {_when(lease.expires_at)}{lost}"
        )
    active = [
        {
            "slot_id": entry.slot.id,
            "agent_id": entry.slot.agent_id,
            "state": entry.state.value,
            "attempt": entry.attempt,
            "started_at": iso(entry.started_at),
            "last_change": iso(entry.last_change),
        }
        for entry in status.active
    ]
    print_table(active[:DEFAULT_LIMIT], _ACTIVE_CELLS, title="active")
    note_shown(
        min(len(active), DEFAULT_LIMIT),
        len(active),
        "active slots",
        which="the first ",
        hint="`calsched status --json` has them all",
    )
    recent = [
        {
            "slot_id": item.slot_id,
            "agent_id": item.agent_id,
            "status": item.status.value,
            "resolved_at": iso(item.resolved_at),
            "summary": item.summary,
            "reason": item.reason,
        }
        for item in status.history
    ]
    print_table(recent, _RECENT_CELLS, title="history")


_ACTIVE_CELLS = (
    field_cell("slot", "slot_id"),
    field_cell("agent", "agent_id"),
    field_cell("state", "state", kind="word"),
    field_cell("attempt", "attempt", kind="word", show="wide"),
    time_cell("started", "started_at"),
    time_cell("last change", "last_change"),
)
_RECENT_CELLS = (
    field_cell("slot", "slot_id"),
    field_cell("agent", "agent_id"),
    field_cell("status", "status", kind="word"),
    time_cell("resolved", "resolved_at"),
    note_cell(),
)


def _when(value: datetime | None) -> str:
    from calsched.model import format_time

    return short_time(format_time(value)) if value is not None else ""
