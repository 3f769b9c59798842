"""calsched.daemon: the adapters `calsched run` builds from a configuration."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest

from calsched.backend.calendar import LocalCalendar
from calsched.backend.http import HttpBackend
from calsched.config import Config, load_config
from calsched.daemon import (
    _LOST,
    EXIT_RESTART,
    NoHost,
    _allowed_hosts,
    _nudge_when_due,
    _supervise,
    build_host,
    embedded_backend,
    remote_backend,
)
from calsched.errors import ConfigError, WakeFailedError
from calsched.host import CommandHost, ConsoleHost, WebhookHost
from calsched.journal import Journal
from calsched.model import HeartbeatRequest, SlotState, SlotUpdate, utcnow
from calsched.notify import Notifier
from calsched.ports import WakeRequest
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CALSCHED_* variable leaks in; user dirs point into tmp_path."""
    for name in list(os.environ):
        if name.startswith("CALSCHED_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def config(**overrides: object) -> Config:
    """A configuration from defaults and ``overrides`` only."""
    return load_config(overrides=overrides)


WAKE = WakeRequest(agent_id="bob", message="hi", source="calendar:slot-s1", slot_id="s1", attempt=1)


async def test_no_host_fails_every_wake_with_its_cause() -> None:
    """With no host adapter a wake fails, saying why; no agents are listed."""
    host = NoHost()
    with pytest.raises(WakeFailedError) as excinfo:
        await host.wake_agent(WAKE)
    assert str(excinfo.value) == f"wake-agent failed: {NoHost.CAUSE}"
    assert excinfo.value.agent_id == "bob"
    assert await host.list_agents() == []


def test_build_host_none() -> None:
    """adapter none, named explicitly, gives the failing NoHost."""
    assert isinstance(build_host(config(host={"adapter": "none"})), NoHost)


def test_build_host_console_is_the_default() -> None:
    """With no host configured, wakes go to the console, its commands naming ``cli``."""
    host = build_host(config(), cli=["calsched", "--config", "/etc/c.toml"])
    assert isinstance(host, ConsoleHost)
    assert host.cli == ("calsched", "--config", "/etc/c.toml")


async def test_due_slots_nudge_the_heartbeat(
    sqlite_journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher nudges the scheduler once a calendar slot is due, not before."""
    poll = 0.05
    monkeypatch.setattr("calsched.daemon.DUE_POLL_S", poll)
    nudged = asyncio.Event()

    class Recorder:
        settings = SchedulerSettings(identifier="host-a")

        def nudge(self) -> None:
            nudged.set()

    calendar = LocalCalendar(sqlite_journal.engine)
    calendar.add("later", "bob", fire_at=utcnow() + timedelta(hours=1))
    watcher = asyncio.create_task(
        _nudge_when_due(cast(Scheduler, Recorder()), sqlite_journal.engine)
    )
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(nudged.wait()), poll * 4)
        calendar.add("now", "bob")
        await asyncio.wait_for(nudged.wait(), poll * 20)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def test_build_host_webhook(monkeypatch: pytest.MonkeyPatch) -> None:
    """adapter webhook gives a WebhookHost with the configured URLs and token."""
    monkeypatch.setenv("CALSCHED_HOST__TOKEN", "host-secret")
    host = build_host(
        config(
            host={
                "adapter": "webhook",
                "wake_url": "http://127.0.0.1:9/wake",
                "agents_url": "http://127.0.0.1:9/agents",
            },
            scheduler={"wake_timeout_s": 3},
        )
    )
    assert isinstance(host, WebhookHost)
    shown = repr(host)
    assert "token=set" in shown
    assert "timeout" not in shown  # wake_timeout_s is the scheduler's, not the adapter's
    assert "host-secret" not in shown
    await host.aclose()


def test_build_host_command() -> None:
    """adapter command gives a CommandHost running the configured argv."""
    host = build_host(
        config(
            host={"adapter": "command", "command": ["wake", "{agent_id}"], "agents_command": ["ls"]}
        )
    )
    assert isinstance(host, CommandHost)
    assert host.argv_for(WAKE) == ["wake", "bob"]


def test_remote_backend_needs_a_key() -> None:
    """backend_url without an API key is a ConfigError saying where a key comes from."""
    with pytest.raises(ConfigError, match="CALSCHED_BACKEND_API_KEY or backend_api_key_file"):
        remote_backend(config(backend_url="http://127.0.0.1:9"))


async def test_remote_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """backend_url with a key gives an HttpBackend to that URL with the configured cap.

    backend_deadline_s is not passed on: the scheduler applies it around every call.
    """
    monkeypatch.setenv("CALSCHED_BACKEND_API_KEY", "k-123")
    backend = remote_backend(
        config(
            backend_url="http://127.0.0.1:9/api",
            scheduler={"backend_deadline_s": 2},
            backend_max_response_bytes=4096,
        )
    )
    assert isinstance(backend, HttpBackend)
    assert backend.base_url == "http://127.0.0.1:9/api"
    assert backend.max_response_bytes == 4096
    assert "deadline" not in repr(backend)
    await backend.aclose()


async def test_embedded_backend_speaks_the_protocol(sqlite_journal: Journal) -> None:
    """Without backend_url the embedded calendar answers over the HTTP protocol in-process."""
    calendar = LocalCalendar(sqlite_journal.engine)
    calendar.add("s1", "bob", title="Daily")
    assert remote_backend(config()) is None  # no backend_url: the embedded calendar
    backend = embedded_backend(config(), sqlite_journal.engine)
    assert isinstance(backend, HttpBackend)
    try:
        response, rejected = await backend.heartbeat(
            HeartbeatRequest(identifier="host-a", captured_at=utcnow())
        )
        assert rejected == []
        assert [s.id for s in response.slots_to_fire] == ["s1"]
        update = SlotUpdate(
            identifier="host-a", status=SlotState.in_progress, attempt=1, occurred_at=utcnow()
        )
        await backend.send_status("s1", update, "key-1")
    finally:
        await backend.aclose()
    assert calendar.get("s1").status == "in_progress"
    assert [r.idempotency_key for r in calendar.receipts("s1")] == ["key-1"]


def test_allowed_hosts_include_the_configured_address() -> None:
    """The control API accepts its own configured host name besides the loopback names."""
    assert "127.0.0.1" in _allowed_hosts(config().control)
    assert "[::1]" in _allowed_hosts(config(control={"host": "::1"}).control)
    assert "calsched.internal" in _allowed_hosts(
        config(control={"host": "calsched.internal"}).control
    )


# -- supervising the daemon ---------------------------------------------------------------


class FakeScheduler:
    """Just what _supervise uses: start() and restart_requested."""

    def __init__(self) -> None:
        self.started = False
        self.restart_requested = asyncio.Event()

    async def start(self) -> None:
        """Record the start."""
        self.started = True


class FakeServer:
    """A control server that serves until should_exit, or fails when told to."""

    def __init__(self, *, crash: bool = False) -> None:
        self.should_exit = False
        self.started = False
        self.crash = crash
        self.served_with: list[object] | None = None

    async def serve(self, sockets: list[object]) -> None:
        """Serve until asked to exit."""
        self.served_with = sockets
        if self.crash:
            raise OSError("accept failed")
        await asyncio.sleep(0.01)  # uvicorn's start-up: READY=1 must wait for it
        self.started = True
        while not self.should_exit:
            await asyncio.sleep(0.005)


class RecordingNotifier(Notifier):
    """A notifier that records what it would send, and whether the server had started."""

    def __init__(self, server: FakeServer) -> None:
        super().__init__(None)
        self.server = server
        self.sent: list[tuple[str, bool]] = []

    def notify(self, *fields: str) -> bool:
        self.sent.append(("\n".join(fields), self.server.started))
        return True


async def supervise(
    scheduler: FakeScheduler,
    server: FakeServer,
    *,
    exit_on_restart: bool = True,
    lost: asyncio.Event | None = None,
    notifier: Notifier | None = None,
) -> int:
    """Run _supervise with the fakes and a placeholder socket."""
    return await _supervise(
        config(),
        scheduler,  # type: ignore[arg-type]
        server,  # type: ignore[arg-type]
        "sock",  # type: ignore[arg-type]
        lost or asyncio.Event(),
        notifier or Notifier(None),
        backend="embedded",
        exit_on_restart=exit_on_restart,
    )


async def test_supervise_exits_75_on_restart_request() -> None:
    """With exit_on_restart, a restart request stops the server and returns 75."""
    scheduler, server = FakeScheduler(), FakeServer()
    asyncio.get_running_loop().call_later(0.05, scheduler.restart_requested.set)
    assert await supervise(scheduler, server) == EXIT_RESTART
    assert scheduler.started
    assert server.served_with == ["sock"]
    assert server.should_exit


async def test_supervise_stops_on_sigterm() -> None:
    """SIGTERM is a graceful stop with status 0; a restart request alone is ignored."""
    scheduler, server = FakeScheduler(), FakeServer()
    scheduler.restart_requested.set()  # not asked to exit on restart: no effect
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
    assert await supervise(scheduler, server, exit_on_restart=False) == 0
    assert server.should_exit


async def test_supervise_fails_when_the_control_api_dies() -> None:
    """A control server that stops on its own ends the daemon with status 1."""
    assert await supervise(FakeScheduler(), FakeServer(crash=True)) == 1


async def test_supervise_steps_down_when_the_lease_is_lost() -> None:
    """A lost lease stops the server and returns the step-down marker (not 0, not 75)."""
    lost = asyncio.Event()
    server = FakeServer()
    asyncio.get_running_loop().call_later(0.05, lost.set)
    assert await supervise(FakeScheduler(), server, lost=lost) == _LOST
    assert server.should_exit


async def test_supervise_notifies_ready_once_serving_and_stopping_at_the_end() -> None:
    """READY=1 only after the server started; STOPPING=1 when the stop begins."""
    scheduler, server = FakeScheduler(), FakeServer()
    notifier = RecordingNotifier(server)
    asyncio.get_running_loop().call_later(0.1, scheduler.restart_requested.set)
    assert await supervise(scheduler, server, notifier=notifier) == EXIT_RESTART
    ready, stopping = notifier.sent
    assert ready[0].startswith("READY=1\nSTATUS=serving http://127.0.0.1:")
    assert ready[1] is True  # the server had started when READY=1 went out
    assert stopping == ("STOPPING=1", True)


async def test_supervise_sends_no_ready_when_the_control_api_dies() -> None:
    server = FakeServer(crash=True)
    notifier = RecordingNotifier(server)
    assert await supervise(FakeScheduler(), server, notifier=notifier) == 1
    assert notifier.sent == [("STOPPING=1", False)]


async def test_supervise_sends_no_stopping_on_a_step_down() -> None:
    """A step-down may stand by again: STOPPING=1 would make systemd stop the unit."""
    lost = asyncio.Event()
    server = FakeServer()
    notifier = RecordingNotifier(server)
    asyncio.get_running_loop().call_later(0.1, lost.set)
    assert await supervise(FakeScheduler(), server, lost=lost, notifier=notifier) == _LOST
    assert [text.split("\n")[0] for text, _ in notifier.sent] == ["READY=1"]
