"""The agent tool commands and ``status`` against the control API served on loopback.

The API is the real one (:func:`calsched.control.create_control_app`) under uvicorn; the
scheduler behind it is a recording fake, so each test sees exactly what the command sent
(path, token, body) and how it renders the answer or the protocol's error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from calsched.cli import app
from calsched.control import create_control_app
from calsched.errors import InvalidTransitionError, NoActiveSlotError, StaleSlotError
from calsched.model import Slot, SlotState, SlotView, parse
from calsched.status import SchedulerStatus, SlotEntry
from calsched.testing import serve_backend
from calsched.tokens import agent_token, load_or_create_secret

T0 = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)


def view(slot_id: str, agent_id: str, state: SlotState = SlotState.in_progress) -> SlotView:
    """A slot view as the scheduler would return it."""
    return SlotView(
        identifier="host-a",
        slot_id=slot_id,
        agent_id=agent_id,
        state=state,
        attempt=1,
        slot=Slot(id=slot_id, agent_id=agent_id, title="Daily report", prompt_text="Write it"),
        received_at=T0,
        started_at=T0,
        updated_at=T0,
        resolved_at=None,
        summary=None,
        reason=None,
        last_seq=3,
    )


class RecordingTools:
    """A SlotTools fake: one current slot per agent, every call recorded."""

    def __init__(self) -> None:
        self.current: dict[str, SlotView] = {"bob": view("s-18", "bob")}
        self.calls: list[tuple[Any, ...]] = []
        #: The actor the control API gave each complete.
        self.actors: list[Any] = []

    def _get(self, agent_id: str, slot_id: str | None) -> SlotView:
        found = self.current.get(agent_id)
        if found is None:
            raise NoActiveSlotError(agent_id)
        if slot_id is not None and slot_id != found.slot_id:
            raise StaleSlotError(agent_id, slot_id, found.slot_id)
        return found

    def _move(self, agent_id: str, state: SlotState, **changes: Any) -> SlotView:
        moved = dataclasses.replace(self.current[agent_id], state=state, **changes)
        self.current[agent_id] = moved
        return moved

    async def current_slot(self, agent_id: str) -> SlotView:
        """The agent's current slot."""
        self.calls.append(("slot", agent_id))
        return self._get(agent_id, None)

    async def complete(
        self, agent_id: str, summary: str | None = None, *, slot_id: str | None = None, **kw: Any
    ) -> SlotView:
        """Complete it."""
        self.calls.append(("complete", agent_id, summary, slot_id))
        self.actors.append(kw.get("actor"))
        self._get(agent_id, slot_id)
        return self._move(agent_id, SlotState.completed, summary=summary)

    async def abort(
        self, agent_id: str, reason: str | None = None, *, slot_id: str | None = None, **kw: Any
    ) -> SlotView:
        """Abort it."""
        self.calls.append(("abort", agent_id, reason, slot_id))
        self._get(agent_id, slot_id)
        return self._move(agent_id, SlotState.aborted, reason=reason)

    async def pause(
        self, agent_id: str, reason: str | None = None, *, slot_id: str | None = None, **kw: Any
    ) -> SlotView:
        """Pause it."""
        self.calls.append(("pause", agent_id, reason, slot_id))
        self._get(agent_id, slot_id)
        return self._move(agent_id, SlotState.paused, reason=reason)

    async def resume(self, agent_id: str, *, slot_id: str | None = None, **kw: Any) -> SlotView:
        """Resume it; only a paused slot can be resumed."""
        self.calls.append(("resume", agent_id, slot_id))
        found = self._get(agent_id, slot_id)
        if found.state is not SlotState.paused:
            raise InvalidTransitionError(found.slot_id, found.state.value, "resume")
        return self._move(agent_id, SlotState.in_progress, reason=None)

    def status(self) -> SchedulerStatus:
        """A status in the protocol's shape."""
        return parse(
            SchedulerStatus,
            {
                "enabled": True,
                "identifier": "host-a",
                "last_heartbeat": "2026-11-27T22:00:00Z",
                "heartbeat_every_s": 30,
                "backend": {
                    "last_ok": "2026-11-27T22:00:00Z",
                    "last_error": None,
                    "key_refused": True,
                },
                "active": [SlotEntry.from_view(self.current["bob"]).to_wire()],
                "history": [
                    {
                        "slot_id": "s-17",
                        "agent_id": "alice",
                        "status": "completed",
                        "resolved_at": "2026-11-27T21:59:00Z",
                        "summary": "sent",
                        "reason": None,
                    }
                ],
                "outbox": {"pending": 2, "dead": 1},
                "restart_pending": False,
                "lease": {
                    "state": "held",
                    "epoch": 7,
                    "host": "web-1",
                    "pid": 4242,
                    "since": "2026-11-27T21:00:00Z",
                    "renewed_at": "2026-11-27T22:00:00Z",
                    "expires_at": "2026-11-27T22:00:20Z",
                    "locked": True,
                },
            },
        )


@pytest.fixture
def tools() -> RecordingTools:
    """The scheduler behind the API."""
    return RecordingTools()


@pytest.fixture
async def control(
    tools: RecordingTools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[bytes]:
    """The control API on a free loopback port; the CLI's config points at it. Yields the secret."""
    for name in list(os.environ):
        if name.startswith("CALSCHED_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    secret_file = tmp_path / "control.secret"
    monkeypatch.setenv("CALSCHED_CONTROL__SECRET_FILE", str(secret_file))
    secret = load_or_create_secret(secret_file)
    async with serve_backend(create_control_app(tools, secret=secret)) as url:
        monkeypatch.setenv("CALSCHED_CONTROL__PORT", url.rsplit(":", 1)[1])
        yield secret


async def cli(*args: str, code: int = 0) -> Result:
    """Run the command in a thread (the server runs on this test's event loop)."""
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args))
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    return result


def error_line(result: Result) -> str:
    """The single error line on stderr."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


async def test_slot(control: bytes, tools: RecordingTools) -> None:
    """slot shows the agent's current slot, as text or as the API's JSON."""
    text = (await cli("slot", "--agent", "bob")).stdout
    assert text.splitlines()[0] == "slot s-18 of agent bob: in_progress (attempt 1)"
    assert "title: Daily report" in text
    data = json.loads((await cli("slot", "--agent", "bob", "--json")).stdout)
    assert data == SlotEntry.from_view(tools.current["bob"]).to_wire()
    assert tools.calls == [("slot", "bob"), ("slot", "bob")]


async def test_complete_sends_summary_and_slot(control: bytes, tools: RecordingTools) -> None:
    """complete posts the summary and the fencing slot id, and prints the new state."""
    result = await cli("complete", "--agent", "bob", "--summary", "report sent", "--slot", "s-18")
    assert result.stdout.splitlines()[0] == "slot s-18 of agent bob: completed (attempt 1)"
    assert "summary: report sent" in result.stdout
    assert tools.calls == [("complete", "bob", "report sent", "s-18")]


async def test_pause_resume_abort(control: bytes, tools: RecordingTools) -> None:
    """pause, resume and abort each reach their route with their reason."""
    paused = json.loads(
        (await cli("pause", "--agent", "bob", "--reason", "review", "--json")).stdout
    )
    assert (paused["state"], paused["reason"]) == ("paused", "review")
    assert "in_progress" in (await cli("resume", "--agent", "bob")).stdout
    assert "aborted" in (await cli("abort", "--agent", "bob", "--reason", "no data")).stdout
    assert tools.calls == [
        ("pause", "bob", "review", None),
        ("resume", "bob", None),
        ("abort", "bob", "no data", None),
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["slot", "--agent", "carol"], "error: agent 'carol' has no active slot (no_active_slot)"),
        (
            ["complete", "--agent", "bob", "--slot", "s-1"],
            "error: slot 's-1' is not agent 'bob''s current slot; its current slot is 's-18' "
            "(stale_slot)",
        ),
        (
            ["resume", "--agent", "bob"],
            "error: slot 's-18' is in_progress: 'resume' is not allowed from there "
            "(invalid_transition)",
        ),
        (
            ["complete", "--agent", "bob", "--summary", "x" * 9000],
            "error: summary: 9000 bytes, at most 8192 allowed (invalid)",
        ),
    ],
    ids=["no-active-slot", "stale-slot", "invalid-transition", "too-long"],
)
async def test_protocol_errors_are_one_line(control: bytes, args: list[str], expected: str) -> None:
    """The API's error JSON becomes one line with the message and code, status 1."""
    assert error_line(await cli(*args, code=1)) == expected


async def test_token_from_environment(
    control: bytes, tools: RecordingTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CALSCHED_TOKEN is sent as is: another agent's token is forbidden, a bad one refused."""
    monkeypatch.setenv("CALSCHED_TOKEN", agent_token(control, "alice"))
    forbidden = error_line(await cli("complete", "--agent", "bob", code=1))
    assert forbidden.endswith("(forbidden)")
    monkeypatch.setenv("CALSCHED_TOKEN", "agent.Ym9i.bm90LWEtbWFj")
    assert error_line(await cli("slot", "--agent", "bob", code=1)).endswith("(unauthorized)")
    monkeypatch.setenv("CALSCHED_TOKEN", agent_token(control, "bob"))
    await cli("slot", "--agent", "bob")
    assert tools.calls == [("slot", "bob")]


async def test_agent_id_is_quoted_in_the_path(control: bytes, tools: RecordingTools) -> None:
    """An agent id with URL metacharacters reaches the API intact."""
    tools.current["a b?c#d"] = view("s-2", "a b?c#d")
    assert "slot s-2 of agent a b?c#d" in (await cli("slot", "--agent", "a b?c#d")).stdout
    assert tools.calls == [("slot", "a b?c#d")]


async def test_status(control: bytes, tools: RecordingTools) -> None:
    """status shows the scheduler status (admin token): tables, or the JSON as served."""
    data = json.loads((await cli("status", "--json")).stdout)
    assert data == tools.status().to_wire()
    text = (await cli("status")).stdout
    for expected in (
        "identifier host-a",
        "KEY REFUSED",
        "pending 2",
        "dead 1",
        "s-18",
        "s-17",
        "lease epoch 7  held by web-1 pid 4242",
    ):
        assert expected in text


async def test_as_operator_uses_the_admin_token(
    control: bytes, tools: RecordingTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--as-operator sends the admin token (not CALSCHED_TOKEN): the call acts as operator."""
    monkeypatch.setenv("CALSCHED_TOKEN", "agent.not-a-valid.token")
    await cli("complete", "--agent", "bob", "--summary", "closed by ops", "--as-operator")
    assert tools.calls == [("complete", "bob", "closed by ops", None)]
    assert [a.value for a in tools.actors] == ["operator"]
    monkeypatch.delenv("CALSCHED_TOKEN")
    await cli("complete", "--agent", "bob")
    assert [a.value for a in tools.actors] == ["operator", "agent"]


async def test_token_refuses_a_second_secret_while_a_daemon_runs(
    control: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under another HOME the secret file is missing, but a daemon answers on the port:
    no new secret is made, and the line says which setting points at the daemon's."""
    elsewhere = tmp_path / "other-home" / "control.secret"
    monkeypatch.setenv("CALSCHED_CONTROL__SECRET_FILE", str(elsewhere))
    line = error_line(await cli("token", "--agent", "bob", code=1))
    assert line.startswith(f"error: no control secret at {elsewhere}, but a calsched daemon")
    assert "CALSCHED_CONTROL__SECRET_FILE" in line
    assert not elsewhere.exists()
    monkeypatch.setenv("CALSCHED_CONTROL__SECRET_FILE", str(tmp_path / "control.secret"))
    assert (await cli("token", "--agent", "bob")).stdout.strip() == agent_token(control, "bob")


async def test_status_tables_fit_80_columns_and_bound_the_active_list(
    control: bytes, tools: RecordingTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 80 columns every status line fits with its timestamps whole; past 50 active
    slots the table stops with a note, and --json still has them all."""
    data = tools.status().to_wire()
    data["active"] = [
        SlotEntry.from_view(
            view(f"s-5f3a9c1e{index:04d}", f"agent-with-a-long-name-{index}")
        ).to_wire()
        for index in range(60)
    ]
    monkeypatch.setattr(tools, "status", lambda: parse(SchedulerStatus, data))
    monkeypatch.setenv("COLUMNS", "80")
    result = await cli("status")
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    tables = "\n".join(lines[[line.strip() for line in lines].index("active") :])
    stamps = re.findall(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", tables)
    assert len(stamps) == 50 * 2 + 1  # started and last change of 50, resolved of one
    assert "…" not in result.stdout
    assert result.stderr == (
        "showing the first 50 of 60 active slots (`calsched status --json` has them all)\n"
    )
    assert len(json.loads((await cli("status", "--json")).stdout)["active"]) == 60
