"""``calsched mcp --agent ID``: the agent's tools as an MCP server (:mod:`calsched.mcp`).

The token is the agent's own (``calsched token --agent ID``), read from ``CALSCHED_TOKEN``
or from the file named by ``--token-file`` (or ``CALSCHED_TOKEN_FILE``), never from a
flag's value: command lines are visible to every user in ``ps``. The admin token is
refused, so every call is authorised as this one agent and journaled as ``agent``; a token
of another agent is served with a warning, and every tool call then fails as a tool error
(the daemon's 403) that says so.
Logs go to stderr: on stdio, stdout carries the protocol.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from calsched.commands.common import EXIT_USAGE, AgentOption, config_of, fail
from calsched.commands.control import TOKEN_ENV

__all__ = ["TOKEN_FILE_ENV", "mcp"]

log = logging.getLogger("calsched.mcp")

#: Names a file holding the agent token, when the token is not in ``CALSCHED_TOKEN``.
TOKEN_FILE_ENV = "CALSCHED_TOKEN_FILE"  # noqa: S105 - the name of a variable, not a secret


def _token(token_file: Path | None) -> str:
    given = os.environ.get(TOKEN_ENV, "").strip()
    if given:
        return given
    path = token_file or (
        Path(os.environ[TOKEN_FILE_ENV]) if os.environ.get(TOKEN_FILE_ENV) else None
    )
    if path is None:
        fail(
            f"no agent token: set {TOKEN_ENV}, or give --token-file PATH "
            f"(make one with: calsched token --agent ID)",
            EXIT_USAGE,
        )
    try:
        token = path.expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the token file {path}: {type(exc).__name__}", EXIT_USAGE)
    if not token:
        fail(f"the token file {path} is empty", EXIT_USAGE)
    return token


def mcp(
    ctx: typer.Context,
    agent: AgentOption,
    token_file: Annotated[
        Path | None,
        typer.Option(help=f"A file holding the agent token (else ${TOKEN_ENV})."),
    ] = None,
    http: Annotated[
        bool, typer.Option("--http", help="Serve streamable HTTP on loopback, not stdio.")
    ] = False,
    port: Annotated[int, typer.Option(help="The loopback port for --http.")] = 8766,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info, warning or error (default warning).")
    ] = None,
) -> None:
    """Serve the agent's calendar tools over MCP (stdio; --http for loopback HTTP).

    Example: CALSCHED_TOKEN=$(calsched token --agent bob) calsched mcp --agent bob
    """
    from calsched.logs import configure_logging
    from calsched.mcp import ControlClient, build_server, claimed_agent, env_trace

    cfg = config_of(ctx)
    token = _token(token_file)
    named = claimed_agent(token)
    if named is None:
        fail("the token is not an agent token (the admin token is refused here)", EXIT_USAGE)
    configure_logging(json_format=cfg.log_json, level=log_level or "warning")
    if named != agent:
        # Served anyway: the daemon refuses every call (403), and each tool says so to the
        # model, which is where the person who can fix the configuration will look.
        log.warning("the token names agent %r, not %r: every call will be refused", named, agent)
    # A host may start this server inside a trace (TRACEPARENT): calls without a
    # traceparent of their own in the request's _meta continue that one.
    client = ControlClient(cfg.control.url, agent, token, trace=env_trace(os.environ))
    server = build_server(client)
    if http:
        server.run("streamable-http", host="127.0.0.1", port=port)
    else:
        server.run("stdio")
