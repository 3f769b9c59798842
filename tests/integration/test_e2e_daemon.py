"""End to end, as an operator runs it: `calsched backend serve`, `calsched run`, the CLI tools.

Every calsched piece is a real subprocess (``python -m calsched``) on 127.0.0.1; only the
agent host is in the test, a webhook app recording wakes. The slot is paused and resumed
with `calsched pause/resume`, the daemon is SIGKILLed and restarted, the slot is found
still active and completed with `calsched complete`, and the backend's receipts show it
heard every change exactly once, in order.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from calsched.tokens import admin_token
from tests.integration.conftest import WakeRecorder, child_env
from tests.integration.conftest import free_port as _free_port

SLOT = "e2e-1"
AGENT = "bob"
IDENTIFIER = "host-e2e"
STEP_TIMEOUT_S = 20.0


@dataclass
class Stack:
    """Paths, ports and the environment every calsched subprocess of the test shares."""

    root: Path
    env: dict[str, str]
    api_key: str
    backend_port: int = field(default_factory=_free_port)
    control_port: int = field(default_factory=_free_port)
    procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = field(default_factory=list)

    @property
    def backend_config(self) -> Path:
        """The reference backend's config (its own database)."""
        return self.root / "backend.toml"

    @property
    def daemon_config(self) -> Path:
        """The daemon's config (its own journal, pointed at the backend)."""
        return self.root / "daemon.toml"

    @property
    def backend_url(self) -> str:
        """Where the reference backend listens."""
        return f"http://127.0.0.1:{self.backend_port}"

    @property
    def control_url(self) -> str:
        """Where the daemon's control API listens."""
        return f"http://127.0.0.1:{self.control_port}"

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """``python -m calsched ARGS`` in the background, output to ``<name>.log``."""
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "calsched", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        self.procs.append((proc, log))
        return proc

    async def cli(self, config: Path, *args: str) -> Any:
        """Run ``python -m calsched --config CONFIG ARGS --json``; its JSON output."""
        argv = [sys.executable, "-m", "calsched", "--config", str(config), *args, "--json"]
        done = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, env=self.env, timeout=60
        )
        assert done.returncode == 0, f"{args}: {done.stderr}{done.stdout}"
        return json.loads(done.stdout)

    def logs(self) -> str:
        """Every subprocess log, for failure messages."""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted(self.root.glob("*.log"))
        )

    def kill_all(self) -> None:
        """SIGKILL whatever still runs, and reap it."""
        for proc, log in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            log.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A temp HOME and XDG dirs, no CALSCHED_* of the runner's, the API key in the env.

    Every subprocess started through it is killed at teardown.
    """
    api_key = secrets.token_urlsafe(24)
    env = child_env(
        tmp_path / "home",
        CALSCHED_BACKEND_API_KEY=api_key,
        PYTHONUNBUFFERED="1",
    )
    made = Stack(root=tmp_path, env=env, api_key=api_key)
    try:
        yield made
    finally:
        made.kill_all()


@pytest.fixture
async def host(wake_host: tuple[WakeRecorder, str]) -> tuple[WakeRecorder, str]:
    """The shared webhook host (``wake_host`` in conftest), under this module's name."""
    return wake_host


def _write_configs(stack: Stack, wake_url: str) -> None:
    stack.backend_config.write_text(
        f'database_url = "sqlite:///{stack.root / "backend.db"}"\n'
        'identifier = "reference-backend"\n'
        'log_level = "warning"\n'
    )
    stack.daemon_config.write_text(
        f'database_url = "sqlite:///{stack.root / "daemon.db"}"\n'
        f'identifier = "{IDENTIFIER}"\n'
        f'backend_url = "{stack.backend_url}"\n'
        'log_level = "warning"\n'
        "[control]\n"
        'host = "127.0.0.1"\n'
        f"port = {stack.control_port}\n"
        f'secret_file = "{stack.root / "control.secret"}"\n'
        "[host]\n"
        'adapter = "webhook"\n'
        f'wake_url = "{wake_url}"\n'
        "[scheduler]\n"
        "heartbeat_interval_s = 0.3\n"
        "outbox_poll_s = 0.2\n"
        "outbox_backoff_initial_s = 0.1\n"
        "shutdown_grace_s = 2.0\n"
    )


async def _until(what: str, check: Callable[[], Awaitable[Any]], stack: Stack) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the logs after a while."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}\n{stack.logs()}")


async def _answers(client: httpx.AsyncClient, path: str, **headers: str) -> bool:
    try:
        return (await client.get(path, headers=headers)).status_code == 200
    except httpx.TransportError:
        return False


async def test_daemon_backend_and_cli_tools_end_to_end(
    stack: Stack, host: tuple[WakeRecorder, str]
) -> None:
    """A slot goes through wake, pause, resume, SIGKILL + restart and complete; the
    backend hears in_progress, paused, in_progress, completed, each exactly once."""
    recorder, wake_url = host
    _write_configs(stack, wake_url)
    bearer = f"Bearer {stack.api_key}"
    async with httpx.AsyncClient(timeout=5.0) as http:
        backend = stack.start(
            "backend",
            "--config",
            str(stack.backend_config),
            "backend",
            "serve",
            "--port",
            str(stack.backend_port),
        )
        receipts_url = f"{stack.backend_url}/v1/receipts"
        await _until(
            "the reference backend",
            lambda: _answers(http, receipts_url, authorization=bearer),
            stack,
        )

        def start_daemon() -> subprocess.Popen[bytes]:
            return stack.start("daemon", "--config", str(stack.daemon_config), "run")

        daemon = start_daemon()
        healthz = f"{stack.control_url}/healthz"
        await _until("the daemon", lambda: _answers(http, healthz), stack)
        admin = {
            "authorization": f"Bearer {admin_token((stack.root / 'control.secret').read_bytes())}"
        }

        async def slot_state() -> str | None:
            status = (await http.get(f"{stack.control_url}/v1/status", headers=admin)).json()
            states = [a["state"] for a in status["active"] if a["slot"]["id"] == SLOT]
            return states[0] if states else None

        added = await stack.cli(
            stack.backend_config,
            "slots", "add", "--agent", AGENT, "--id", SLOT,
            "--title", "Daily report", "--prompt", "Write today's report",
        )  # fmt: skip
        assert added["status"] == "scheduled"

        await _until("the wake", lambda: _async(bool(recorder.wakes)), stack)
        assert recorder.wakes[0] == {
            "agent_id": AGENT,
            "message": "Write today's report",
            "source": f"calendar:slot-{SLOT}",
            "slot_id": SLOT,
            "attempt": 1,
        }
        await _until("in_progress", lambda: _is(slot_state, "in_progress"), stack)

        paused = await stack.cli(
            stack.daemon_config, "pause", "--agent", AGENT, "--reason", "waiting for review"
        )
        assert (paused["slot"]["id"], paused["state"]) == (SLOT, "paused")
        resumed = await stack.cli(stack.daemon_config, "resume", "--agent", AGENT)
        assert resumed["state"] == "in_progress"

        daemon.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(daemon.wait, 10) == -signal.SIGKILL
        start_daemon()
        await _until("the restarted daemon", lambda: _answers(http, healthz), stack)

        status = await stack.cli(stack.daemon_config, "status")
        assert [(a["slot"]["id"], a["state"], a["attempt"]) for a in status["active"]] == [
            (SLOT, "in_progress", 1)
        ]
        current = await stack.cli(stack.daemon_config, "slot", "--agent", AGENT)
        assert (current["slot"]["id"], current["state"]) == (SLOT, "in_progress")

        completed = await stack.cli(
            stack.daemon_config, "complete", "--agent", AGENT, "--summary", "report sent"
        )
        assert completed["state"] == "completed"

        async def receipts() -> list[dict[str, Any]] | None:
            found = (
                await http.get(
                    receipts_url, params={"slot_id": SLOT}, headers={"authorization": bearer}
                )
            ).json()["receipts"]
            return found if found and found[-1]["status"] == "completed" else None

        heard = await _until("the completed receipt", receipts, stack)
        assert [r["status"] for r in heard] == ["in_progress", "paused", "in_progress", "completed"]
        assert {r["identifier"] for r in heard} == {IDENTIFIER}
        assert heard[1]["body"]["reason"] == "waiting for review"
        assert heard[-1]["body"]["summary"] == "report sent"
        assert len({r["idempotency_key"] for r in heard}) == 4
        assert backend.poll() is None, stack.logs()

    # The daemon's own journal: the restart added no event; the agent made every change.
    engine = create_engine(f"sqlite:///{stack.root / 'daemon.db'}", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT kind, actor FROM slot_timeline WHERE slot_id = :s ORDER BY seq"),
                {"s": SLOT},
            ).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [
        ("receive", "scheduler"),
        ("dispatch", "scheduler"),
        ("woke", "scheduler"),
        ("pause", "agent"),
        ("resume", "agent"),
        ("complete", "agent"),
    ]
    assert {(w["source"], w["attempt"]) for w in recorder.wakes} == {(f"calendar:slot-{SLOT}", 1)}


async def _async(value: Any) -> Any:
    return value


async def _is(get: Callable[[], Awaitable[str | None]], state: str) -> bool:
    return await get() == state
