"""tests/reliability/zygote.py: the fork server starts real ``calsched`` command lines
and reports how each ended (exit status, or the signal that killed it)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.reliability.zygote import Forked, ForkServer


@pytest.fixture
async def forks() -> AsyncIterator[ForkServer]:
    server = ForkServer()
    await server.open()
    yield server
    await server.aclose()


async def _ended(child: Forked) -> int:
    async with asyncio.timeout(30):
        while child.poll() is None:
            await asyncio.sleep(0.02)
    code = child.poll()
    assert code is not None
    return code


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CALSCHED_")}


async def test_a_child_runs_the_cli_with_its_argv_env_and_log(
    forks: ForkServer, tmp_path: Path
) -> None:
    log = tmp_path / "help.log"
    child = await forks.spawn(["--help"], _env(), log)
    assert await _ended(child) == 0
    assert "run" in log.read_text()
    missing = await forks.spawn(["--config", str(tmp_path / "nope.toml"), "status"], _env(), log)
    assert await _ended(missing) not in (0, None)


async def test_a_sigkilled_daemon_is_reported_killed(forks: ForkServer, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "daemon.toml"
    config.write_text(
        f'database_url = "sqlite:///{tmp_path / "d.db"}"\nidentifier = "zygote"\n'
        f'[control]\nhost = "127.0.0.1"\nport = {port}\n'
        f'secret_file = "{tmp_path / "secret"}"\n'
    )
    log = tmp_path / "daemon.log"
    child = await forks.spawn(["--config", str(config), "run"], _env(), log)
    async with asyncio.timeout(30):
        while not (tmp_path / "d.db").exists():
            await asyncio.sleep(0.02)
    assert child.poll() is None, log.read_text()
    child.send_signal(signal.SIGKILL)
    assert await _ended(child) == -signal.SIGKILL
    child.send_signal(signal.SIGKILL)  # reaped: a no-op, never a reused pid
