"""Tests for calsched.host.command: wakes by running real tiny Python programs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from calsched.errors import ConfigError, WakeFailedError
from calsched.host import CommandHost
from calsched.journal import Journal
from calsched.model import AgentReport, AgentStatus, Slot, SlotState, parse
from calsched.ports import Host, WakeRequest
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend

PY = sys.executable
REQUEST = WakeRequest(
    agent_id="bob",
    message="Write today's report\nwith ünïcode",
    source="calendar:slot-s-18",
    slot_id="s-18",
    attempt=2,
)
# Programs are given through `python -c`; braces in them would be placeholders, so none.
RECORD = (
    "import sys, json, os; "
    "json.dump(dict(argv=sys.argv[2:], stdin=sys.stdin.read(), env=dict(os.environ)), "
    "open(sys.argv[1], 'w'))"
)
SLEEP_WITH_PID = (
    "import sys, os, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
)


def _gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (absent, or a zombie its new parent will reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def _wait_gone(pid: int) -> bool:
    for _ in range(200):
        if _gone(pid):
            return True
        await asyncio.sleep(0.01)
    return False


async def _wait_file(path: Path) -> str:
    for _ in range(500):
        if path.exists() and path.read_text():
            return path.read_text()
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} was never written")


@contextlib.asynccontextmanager
async def _scheduler(
    db_url: str, backend: InMemoryBackend, host: CommandHost, **settings: float
) -> AsyncIterator[Scheduler]:
    """A running scheduler on a fresh journal at ``db_url`` with ``settings``."""
    Journal.open(db_url, "host-a", upgrade=True).close()
    journal = Journal.open(db_url, "host-a")
    try:
        async with Scheduler(
            SchedulerSettings(identifier="host-a", **settings), journal, backend, host
        ) as sched:
            yield sched
    finally:
        journal.close()


@pytest.fixture
def stray_pids() -> Iterator[list[int]]:
    """Pids a test started indirectly; killed at teardown if still there."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_command_host_is_a_host() -> None:
    """CommandHost satisfies the Host port (checked by mypy through this assignment)."""
    host: Host = CommandHost([PY, "-c", "pass"])
    assert isinstance(host, CommandHost)


async def test_message_on_stdin_and_placeholders_filled(tmp_path: Path) -> None:
    """The message arrives on stdin; each placeholder is filled inside its own argument."""
    out = tmp_path / "out.json"
    template = [PY, "-c", RECORD, str(out)]
    template += ["{agent_id}", "--slot={slot_id}", "{source}", "{attempt}", "{{literal}}"]
    host = CommandHost(template)
    await host.wake_agent(REQUEST)
    seen = json.loads(out.read_text())
    assert seen["stdin"] == REQUEST.message
    assert seen["argv"] == ["bob", "--slot=s-18", "calendar:slot-s-18", "2", "{literal}"]


async def test_values_are_never_split_or_reexpanded(tmp_path: Path) -> None:
    """Spaces, shell syntax and braces in values stay one literal argument: no shell."""
    out = tmp_path / "out.json"
    host = CommandHost([PY, "-c", RECORD, str(out), "{agent_id}", "{slot_id}"])
    request = WakeRequest(
        agent_id="bob; touch pwned $(id)", message="", source="x", slot_id="{agent_id}", attempt=1
    )
    await host.wake_agent(request)
    assert json.loads(out.read_text())["argv"] == ["bob; touch pwned $(id)", "{agent_id}"]
    assert not (tmp_path / "pwned").exists()


async def test_nonzero_exit_fails_with_first_stderr_line() -> None:
    """A non-zero exit fails the wake with "exit N: <first non-empty stderr line>"."""
    script = "import sys; sys.stderr.write('\\n  agent is asleep  \\nsecond line\\n'); sys.exit(3)"
    host = CommandHost([PY, "-c", script])
    with pytest.raises(WakeFailedError) as info:
        await host.wake_agent(REQUEST)
    assert info.value.agent_id == "bob"
    assert info.value.cause == "exit 3: agent is asleep"
    assert str(info.value) == "wake-agent failed: exit 3: agent is asleep"


async def test_nonzero_exit_without_stderr() -> None:
    """Without stderr output the cause is just the exit status."""
    with pytest.raises(WakeFailedError, match=r"failed: exit 1$"):
        await CommandHost([PY, "-c", "raise SystemExit(1)"]).wake_agent(REQUEST)


async def test_long_stderr_line_is_truncated() -> None:
    """A huge stderr line is cut to a short cause."""
    script = "import sys; sys.stderr.write('e' * 100000); sys.exit(1)"
    with pytest.raises(WakeFailedError) as info:
        await CommandHost([PY, "-c", script]).wake_agent(REQUEST)
    assert info.value.cause == "exit 1: " + "e" * 199 + "…"


async def test_death_by_signal_is_named() -> None:
    """A program killed by a signal fails with "killed by signal N"."""
    script = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    with pytest.raises(WakeFailedError, match="killed by signal 9"):
        await CommandHost([PY, "-c", script]).wake_agent(REQUEST)


async def test_the_schedulers_wake_timeout_kills_the_program_and_what_it_started(
    db_url: str, tmp_path: Path, stray_pids: list[int]
) -> None:
    """A wake still running at the scheduler's wake_timeout_s fails with the scheduler's
    message, and the program and its children are killed and reaped: no orphan."""
    child_pid = tmp_path / "child"
    script = (
        "import sys, os, subprocess, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "open(sys.argv[1], 'w').write(str(os.getpid()) + ' ' + str(p.pid)); time.sleep(60)"
    )
    host = CommandHost([PY, "-c", script, str(child_pid)])
    backend = InMemoryBackend([parse(Slot, {"id": "s1", "agent_id": "bob", "title": "t"})])
    async with _scheduler(db_url, backend, host, wake_timeout_s=1.0) as sched:
        await sched.heartbeat_once()
        await sched.idle()
        view = sched.journal.get("s1")
    assert view is not None
    assert view.state is SlotState.aborted
    assert view.reason == "wake-agent failed: timeout after 1s"
    pid, grandchild = (int(p) for p in child_pid.read_text().split())
    stray_pids.append(grandchild)
    with pytest.raises(ProcessLookupError):  # reaped, not a zombie
        os.kill(pid, 0)
    assert await _wait_gone(grandchild)


async def test_cancelled_wake_kills_and_reaps(tmp_path: Path, stray_pids: list[int]) -> None:
    """A wake cancelled from outside (the scheduler's deadline) leaves no process behind."""
    pid_file = tmp_path / "pid"
    host = CommandHost([PY, "-c", SLEEP_WITH_PID, str(pid_file)])
    task = asyncio.create_task(host.wake_agent(REQUEST))
    pid = int(await _wait_file(pid_file))
    stray_pids.append(pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_background_child_holding_stderr_does_not_hang(
    tmp_path: Path, stray_pids: list[int]
) -> None:
    """A program that exits 0 but leaves a child with its stderr open is accepted at once."""
    child_pid = tmp_path / "child"
    script = (
        "import sys, subprocess; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
        "open(sys.argv[1], 'w').write(str(p.pid))"
    )
    host = CommandHost([PY, "-c", script, str(child_pid)])
    loop = asyncio.get_running_loop()
    started = loop.time()
    await host.wake_agent(REQUEST)
    stray_pids.append(int(child_pid.read_text()))
    assert loop.time() - started < 5


async def test_program_that_ignores_stdin_is_fine() -> None:
    """A large message the program never reads does not block or break the wake."""
    request = WakeRequest(
        agent_id="bob", message="x" * 1_000_000, source="s", slot_id="s", attempt=1
    )
    await CommandHost([PY, "-c", "pass"]).wake_agent(request)


async def test_missing_program_fails_the_wake() -> None:
    """A program that cannot be started is a failed wake, not a crash."""
    host = CommandHost(["/nonexistent/calsched-wake", "{agent_id}"])
    with pytest.raises(WakeFailedError, match="cannot run /nonexistent/calsched-wake"):
        await host.wake_agent(REQUEST)


async def test_nul_byte_in_a_value_fails_the_wake() -> None:
    """A value that cannot be an argument (NUL byte) fails the wake cleanly."""
    host = CommandHost([PY, "-c", "pass", "{agent_id}"])
    request = WakeRequest(agent_id="b\0b", message="", source="s", slot_id="s", attempt=1)
    with pytest.raises(WakeFailedError, match="cannot run"):
        await host.wake_agent(request)


async def test_default_environment_drops_calsched_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default the program gets the daemon's environment minus CALSCHED_* (the API key)."""
    monkeypatch.setenv("CALSCHED_API_KEY", "k-secret")
    monkeypatch.setenv("HOST_SETTING", "kept")
    out = tmp_path / "out.json"
    await CommandHost([PY, "-c", RECORD, str(out)]).wake_agent(REQUEST)
    env = json.loads(out.read_text())["env"]
    assert env["HOST_SETTING"] == "kept"
    assert "CALSCHED_API_KEY" not in env


async def test_explicit_environment_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """env= is the program's whole environment."""
    monkeypatch.setenv("HOST_SETTING", "not passed")
    out = tmp_path / "out.json"
    await CommandHost([PY, "-c", RECORD, str(out)], env={"ONLY": "this"}).wake_agent(REQUEST)
    env = json.loads(out.read_text())["env"]
    assert env["ONLY"] == "this"
    assert "HOST_SETTING" not in env


async def test_the_wakes_trace_context_is_in_the_environment(tmp_path: Path) -> None:
    """A wake's traceparent and tracestate reach the program as TRACEPARENT/TRACESTATE."""
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    out = tmp_path / "out.json"
    host = CommandHost([PY, "-c", RECORD, str(out)], env={"ONLY": "this"})
    trace = {"traceparent": traceparent, "tracestate": "v=1", "other": "dropped"}
    await host.wake_agent(dataclasses.replace(REQUEST, trace=trace))
    env = json.loads(out.read_text())["env"]
    assert (env["TRACEPARENT"], env["TRACESTATE"], env["ONLY"]) == (traceparent, "v=1", "this")
    assert "OTHER" not in env


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        (["notify", "{agent}"], "unknown placeholder {agent}"),
        (["notify", "{}"], "unknown placeholder"),
        (["notify", "{0}"], "unknown placeholder"),
        (["notify", "{agent_id.__class__}"], "unknown placeholder"),
        (["notify", "{agent_id[0]}"], "unknown placeholder"),
        (["notify", "{agent_id"], "bad placeholder"),
        (["notify", "}"], "bad placeholder"),
        (["notify", "{attempt:q}"], "bad placeholder"),
        ("notify {agent_id}", "list of arguments"),
        ([], "must name a program"),
        ([""], "must name a program"),
    ],
)
def test_bad_templates_are_config_errors(template: list[str], problem: str) -> None:
    """Unknown or malformed placeholders are refused when the host is built."""
    with pytest.raises(ConfigError, match=problem.replace("{", r"\{").replace("[", r"\[")):
        CommandHost(template)


def test_bad_settings_are_config_errors() -> None:
    """An empty list command is refused."""
    with pytest.raises(ConfigError):
        CommandHost([PY], list_argv=[])
    with pytest.raises(ConfigError):
        CommandHost([PY], list_argv="list-agents")


def test_format_specs_are_allowed() -> None:
    """Format specs on known placeholders work: {attempt:03d}."""
    host = CommandHost(["notify", "--attempt={attempt:03d}", "{agent_id!r}"])
    assert host.argv_for(REQUEST) == ["notify", "--attempt=002", "'bob'"]


def test_repr_shows_the_template() -> None:
    """repr shows the argument template (it holds no secret: those go in env)."""
    shown = repr(CommandHost(["notify", "{agent_id}"]))
    assert "{agent_id}" in shown
    assert "timeout" not in shown  # the scheduler owns the deadline


# -- list_agents ----------------------------------------------------------------------


async def test_list_agents_reads_stdout(caplog: pytest.LogCaptureFixture) -> None:
    """list_argv prints {"agents": [...]}; valid agents are returned, invalid ones logged."""
    agents = [{"id": "bob", "model": "m", "status": "busy"}, {"status": "idle"}]
    script = f"print({json.dumps(json.dumps({'agents': agents}))})"
    host = CommandHost([PY, "-c", "pass"], list_argv=[PY, "-c", script])
    with caplog.at_level(logging.WARNING, logger="calsched.host"):
        assert await host.list_agents() == [
            AgentReport(id="bob", model="m", status=AgentStatus.busy)
        ]
    assert "agents[1]" in caplog.text


async def test_list_agents_without_command_is_empty() -> None:
    """Without list_argv the list is empty."""
    assert await CommandHost([PY, "-c", "pass"]).list_agents() == []


@pytest.mark.parametrize(
    ("script", "logged"),
    [
        ("import sys; sys.stderr.write('no host\\n'); sys.exit(2)", "exit 2: no host"),
        ("print('not json')", "not JSON"),
        ("print('[1]')", "not an object"),
    ],
    ids=["exit 2", "not json", "not an object"],
)
async def test_failed_list_command_is_empty_and_logged(
    script: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing list program gives [] and a log line, never an exception."""
    host = CommandHost([PY, "-c", "pass"], list_argv=[PY, "-c", script])
    with caplog.at_level(logging.WARNING, logger="calsched.host"):
        assert await host.list_agents() == []
    assert logged in caplog.text


async def test_a_hanging_list_command_is_cut_by_the_heartbeat(
    db_url: str, tmp_path: Path, stray_pids: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat bounds the list program by wake_timeout_s: the beat goes out with no
    agents, and the program is killed and reaped."""
    pid_file = tmp_path / "pid"
    host = CommandHost([PY, "-c", "pass"], list_argv=[PY, "-c", SLEEP_WITH_PID, str(pid_file)])
    backend = InMemoryBackend()
    with caplog.at_level(logging.WARNING, logger="calsched"):
        async with _scheduler(db_url, backend, host, wake_timeout_s=1.0) as sched:
            assert await sched.heartbeat_once() is True
    # The started loop may beat too (at start): every beat went out, with no agents.
    assert backend.heartbeats
    assert all(beat.agents == [] for beat in backend.heartbeats)
    assert "listing agents failed: TimeoutError" in caplog.text
    pid = int(pid_file.read_text())
    stray_pids.append(pid)
    with pytest.raises(ProcessLookupError):  # reaped, not a zombie
        os.kill(pid, 0)


async def test_list_command_that_cannot_start_is_empty(caplog: pytest.LogCaptureFixture) -> None:
    """A missing list program gives [] and a log line."""
    host = CommandHost([PY, "-c", "pass"], list_argv=["/nonexistent/list-agents"])
    with caplog.at_level(logging.WARNING, logger="calsched.host"):
        assert await host.list_agents() == []
    assert "cannot run /nonexistent/list-agents" in caplog.text
