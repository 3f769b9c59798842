"""End to end over MCP: a real SDK client starts `calsched mcp` on stdio against a daemon.

The reference backend and the daemon run as subprocesses (the stack of
``test_e2e_daemon``); the MCP client of the ``mcp`` SDK starts ``python -m calsched mcp``
with the agent's token in its environment, lists the tools and takes a slot from
in_progress to paused to in_progress to completed, each change seen in
``calsched history``. A server given another agent's token answers with a tool error. A
keyed ``complete`` repeated over the control API, also after a daemon restart, answers as
the first did and writes one event. ``--http`` serves the same tools on loopback.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from typing import Any

import httpx
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from calsched.tokens import agent_token
from tests.integration.conftest import WakeRecorder
from tests.integration.test_e2e_daemon import (  # noqa: F401 - fixtures
    Stack,
    _answers,
    _free_port,
    _until,
    _write_configs,
    host,
    stack,
)

AGENT = "bob"
TOOLS = {
    "calendar_status",
    "calendar_slot",
    "calendar_complete",
    "calendar_abort",
    "calendar_pause",
    "calendar_resume",
}


async def _history(st: Stack) -> list[dict[str, Any]]:
    argv = [
        sys.executable, "-m", "calsched", "--config", str(st.daemon_config),
        "history", "--agent", AGENT, "--format", "json",
    ]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, env=st.env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


async def _state_in_history(st: Stack, slot_id: str) -> str:
    return next(r["state"] for r in await _history(st) if r["slot_id"] == slot_id)


def _mcp_server(st: Stack, agent: str, token: str) -> StdioServerParameters:
    # A stdio child gets only a default environment unless given one: pass the stack's.
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "calsched", "--config", str(st.daemon_config), "mcp", "--agent", agent],
        env={**st.env, "CALSCHED_TOKEN": token},
    )


async def _add_slot(st: Stack, slot_id: str) -> None:
    added = await st.cli(
        st.backend_config, "slots", "add", "--agent", AGENT, "--id", slot_id,
        "--title", "Daily report", "--prompt", "Write today's report",
    )  # fmt: skip
    assert added["status"] == "scheduled"


def _events(st: Stack, slot_id: str) -> list[tuple[str, str]]:
    engine = create_engine(f"sqlite:///{st.root / 'daemon.db'}", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT kind, actor FROM slot_timeline WHERE slot_id = :s ORDER BY seq"),
                {"s": slot_id},
            ).all()
    finally:
        engine.dispose()
    return [(r[0], r[1]) for r in rows]


async def test_mcp_client_drives_a_slot_and_keys_make_retries_safe(
    stack: Stack,  # noqa: F811 - the imported fixtures
    host: tuple[WakeRecorder, str],  # noqa: F811
) -> None:
    """Tools listed; pause, resume, complete over MCP; a foreign token is a tool error;
    a keyed complete repeated (and after a restart) answers alike, one event."""
    _, wake_url = host
    _write_configs(stack, wake_url)
    bearer = f"Bearer {stack.api_key}"
    async with httpx.AsyncClient(timeout=5.0) as http:
        stack.start(
            "backend", "--config", str(stack.backend_config),
            "backend", "serve", "--port", str(stack.backend_port),
        )  # fmt: skip
        receipts = f"{stack.backend_url}/v1/receipts"
        await _until("the backend", lambda: _answers(http, receipts, authorization=bearer), stack)

        def start_daemon() -> subprocess.Popen[bytes]:
            return stack.start("daemon", "--config", str(stack.daemon_config), "run")

        daemon = start_daemon()
        healthz = f"{stack.control_url}/healthz"
        await _until("the daemon", lambda: _answers(http, healthz), stack)
        bob = (await stack.cli(stack.daemon_config, "token", "--agent", AGENT))["token"]
        alice = (await stack.cli(stack.daemon_config, "token", "--agent", "alice"))["token"]

        await _add_slot(stack, "mcp-1")

        async def in_progress(slot_id: str) -> bool:
            rows = await _history(stack)
            return any(r["slot_id"] == slot_id and r["state"] == "in_progress" for r in rows)

        await _until("mcp-1 in progress", lambda: in_progress("mcp-1"), stack)

        async with Client(_mcp_server(stack, AGENT, bob), read_timeout_seconds=30) as client:
            listed = await client.list_tools()
            assert {t.name for t in listed.tools} == TOOLS
            assert all(t.description and t.output_schema for t in listed.tools)

            current = await client.call_tool("calendar_slot", {})
            assert not current.is_error, current.content
            assert current.structured_content is not None
            assert current.structured_content["slot"]["id"] == "mcp-1"

            steps = [
                ("calendar_pause", {"reason": "waiting for review"}, "paused"),
                ("calendar_resume", {"slot_id": "mcp-1"}, "in_progress"),
                ("calendar_complete", {"summary": "report sent"}, "completed"),
            ]
            for tool, args, state in steps:
                result = await client.call_tool(tool, args)
                assert not result.is_error, (tool, result.content)
                assert result.structured_content is not None
                assert result.structured_content["state"] == state
                assert await _state_in_history(stack, "mcp-1") == state

            none_left = await client.call_tool("calendar_complete", {"summary": "again"})
            assert none_left.is_error
            assert "no active slot" in str(none_left.content[0])

            status = await client.call_tool("calendar_status", {})
            assert status.structured_content is not None
            assert status.structured_content["current"] is None
            assert status.structured_content["history"][0]["slot_id"] == "mcp-1"

        assert _events(stack, "mcp-1")[-3:] == [
            ("pause", "agent"),
            ("resume", "agent"),
            ("complete", "agent"),
        ]

        # Another agent's token: the server starts, and the call is a tool error.
        async with Client(_mcp_server(stack, AGENT, alice), read_timeout_seconds=30) as wrong:
            refused = await wrong.call_tool("calendar_slot", {})
            assert refused.is_error
            assert "another agent" in str(refused.content[0])

        # A keyed complete over the control API, repeated, and repeated after a restart.
        await _add_slot(stack, "mcp-2")
        await _until("mcp-2 in progress", lambda: in_progress("mcp-2"), stack)
        url = f"{stack.control_url}/v1/agents/{AGENT}/slot/complete"
        headers = {"authorization": f"Bearer {bob}", "idempotency-key": "retry-me"}
        first = await http.post(url, json={"summary": "once"}, headers=headers)
        assert first.status_code == 200, first.text
        again = await http.post(url, json={"summary": "once"}, headers=headers)
        assert (again.status_code, again.json()) == (200, first.json())

        daemon.send_signal(signal.SIGKILL)
        await asyncio.to_thread(daemon.wait, 10)
        start_daemon()
        await _until("the restarted daemon", lambda: _answers(http, healthz), stack)
        after = await http.post(url, json={"summary": "once"}, headers=headers)
        assert (after.status_code, after.json()) == (200, first.json())

    assert _events(stack, "mcp-2").count(("complete", "agent")) == 1


async def test_mcp_over_streamable_http_on_loopback(stack: Stack) -> None:  # noqa: F811
    """--http serves the same tools at http://127.0.0.1:PORT/mcp; with no daemon behind
    it a call is a tool error, not a crash."""
    port = _free_port()
    stack.env["CALSCHED_TOKEN"] = agent_token(b"x" * 32, AGENT)
    stack.env["CALSCHED_CONTROL__PORT"] = str(_free_port())  # nothing listens there
    stack.start("mcp", "mcp", "--agent", AGENT, "--http", "--port", str(port))
    url = f"http://127.0.0.1:{port}/mcp"

    async def up() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2.0) as http:
                await http.get(url)
        except httpx.TransportError:
            return False
        return True

    await _until("the MCP HTTP server", up, stack)
    async with Client(url, read_timeout_seconds=30) as client:
        assert {t.name for t in (await client.list_tools()).tools} == TOOLS
        result = await client.call_tool("calendar_slot", {})
    assert result.is_error
    assert "did not answer" in str(result.content[0])
