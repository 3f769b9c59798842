"""The host used when none is configured: each wake is printed for a person to act on.

A first run has no agent host yet. Failing every wake (``host.adapter = "none"``) would
abort each slot a newcomer adds, with nothing to see; printing the wake instead shows what
an agent would be told and the exact command that finishes the slot, so the whole cycle
(wake, ``calsched complete``) works before any host exists. A wake is accepted once it is
written: the person at the terminal is the agent.

The agents it reports in the heartbeat are those the daemon knows from the journal (the
agents of the live slots), given as ``agents``: a console has no agents of its own.
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Callable, Iterable
from typing import TextIO

from calsched.model import AgentReport, AgentStatus
from calsched.ports import WakeRequest

__all__ = ["ConsoleHost", "complete_command"]

log = logging.getLogger("calsched.host")

#: A wake message longer than this is cut in the log line (the terminal gets all of it).
_LOG_MESSAGE_CHARS = 200


def complete_command(request: WakeRequest, cli: Iterable[str] = ("calsched",)) -> str:
    """The shell command that completes the woken slot (quoted for a POSIX shell)."""
    argv = [
        *cli,
        "complete",
        "--agent",
        request.agent_id,
        "--slot",
        request.slot_id,
        "--summary",
        "what was done",
    ]
    return shlex.join(argv)


class ConsoleHost:
    """Wakes by printing to ``stream`` (stdout by default) and logging one line.

    ``cli`` is the command line that reaches this daemon (``calsched`` and, when the
    daemon was started with one, ``--config PATH``), so the printed command works as is.
    ``agents`` lists the agents to report in the heartbeat.
    """

    def __init__(
        self,
        *,
        stream: TextIO | None = None,
        cli: Iterable[str] = ("calsched",),
        agents: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self._stream = stream
        self.cli = tuple(cli)
        #: Where the heartbeat's agent list comes from; the daemon sets it once the
        #: scheduler exists (the host is built first).
        self.agents: Callable[[], Iterable[str]] = agents or (lambda: ())

    #: Where wakes go, for log lines.
    target = "console"

    async def wake_agent(self, request: WakeRequest) -> None:
        """Print the wake and the command that completes it; log it on one line."""
        command = complete_command(request, self.cli)
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write(
            f"\n=== wake: agent {request.agent_id}, slot {request.slot_id}, "
            f"attempt {request.attempt}\n"
            f"{_indent(request.message)}\n"
            f"--- when done: {command}\n"
            f"    (or pause / resume / abort: calsched --help)\n\n"
        )
        stream.flush()
        message = request.message
        if len(message) > _LOG_MESSAGE_CHARS:
            message = message[: _LOG_MESSAGE_CHARS - 1] + "…"
        log.info(
            "wake printed to the console",
            extra={
                "agent_id": request.agent_id,
                "slot_id": request.slot_id,
                "attempt": request.attempt,
                "wake_message": message,
                "complete_with": command,
            },
        )

    async def list_agents(self) -> list[AgentReport]:
        """The agents the daemon knows (status unknown: a console cannot tell)."""
        return [
            AgentReport(id=agent_id, status=AgentStatus.unknown)
            for agent_id in sorted(set(self.agents()))
        ]


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in (text.splitlines() or [""]))
