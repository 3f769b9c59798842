"""calsched.host.console: each wake printed with the command that completes it."""

from __future__ import annotations

import io
import logging
import shlex

import pytest

from calsched.host import ConsoleHost
from calsched.host.console import complete_command
from calsched.model import AgentStatus
from calsched.ports import WakeRequest

WAKE = WakeRequest(
    agent_id="bob",
    message="Write the report\nand send it",
    source="calendar:slot-s-1",
    slot_id="s-1",
    attempt=2,
)


async def test_a_wake_is_printed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The terminal shows agent, slot, attempt, the whole message and the command; the log
    has one line with the same fields."""
    caplog.set_level(logging.INFO, logger="calsched.host")
    out = io.StringIO()
    host = ConsoleHost(stream=out, cli=["calsched", "--config", "/tmp/my config.toml"])
    await host.wake_agent(WAKE)
    shown = out.getvalue()
    assert "agent bob, slot s-1, attempt 2" in shown
    assert "    Write the report\n    and send it" in shown
    command = complete_command(WAKE, host.cli)
    assert command in shown
    assert shlex.split(command) == [
        "calsched",
        "--config",
        "/tmp/my config.toml",
        "complete",
        "--agent",
        "bob",
        "--slot",
        "s-1",
        "--summary",
        "what was done",
    ]
    (line,) = [r for r in caplog.records if r.name == "calsched.host"]
    assert line.msg == "wake printed to the console"
    fields = {k: line.__dict__[k] for k in ("agent_id", "slot_id", "attempt", "complete_with")}
    assert fields == {"agent_id": "bob", "slot_id": "s-1", "attempt": 2, "complete_with": command}


async def test_agents_are_those_the_daemon_knows() -> None:
    """list_agents reports the given agents once each, sorted; none by default."""
    assert await ConsoleHost(stream=io.StringIO()).list_agents() == []
    host = ConsoleHost(stream=io.StringIO(), agents=lambda: ["carol", "bob", "carol"])
    reports = await host.list_agents()
    assert [(r.id, r.status) for r in reports] == [
        ("bob", AgentStatus.unknown),
        ("carol", AgentStatus.unknown),
    ]


async def test_a_closed_terminal_fails_the_wake() -> None:
    """Nobody can see it: the wake fails (and the scheduler aborts the slot, saying so)."""
    out = io.StringIO()
    out.close()
    with pytest.raises(ValueError, match="closed file"):
        await ConsoleHost(stream=out).wake_agent(WAKE)
