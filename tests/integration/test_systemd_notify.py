"""``calsched run`` under ``Type=notify``, without systemd: the test is the notify socket.

A real ``calsched run`` (the embedded calendar, a SQLite journal) is started with
``NOTIFY_SOCKET`` naming an ``AF_UNIX`` datagram socket the test bound in a temp dir. When
``READY=1`` arrives, the control API must already answer and the lease be held; SIGTERM
must bring ``STOPPING=1`` before the process exits 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from calsched.tokens import admin_token
from tests.integration.conftest import child_env, free_port

STEP_TIMEOUT_S = 30.0


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in a short temp dir (AF_UNIX paths are capped at 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="cs-notify-") as root:
        path = os.path.join(root, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.2)
        try:
            yield sock, path
        finally:
            sock.close()


def _next_message(sock: socket.socket, proc: subprocess.Popen[bytes], log: Path) -> str:
    """The next datagram, while the daemon runs."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            return sock.recv(4096).decode()
        except TimeoutError:
            if proc.poll() is not None:
                break
    pytest.fail(f"no notification (exit {proc.poll()})\n{log.read_text(errors='replace')}")


def _until_ready(http: httpx.Client, url: str) -> dict[str, object]:
    """/readyz's body once it answers 200."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    answer = http.get(f"{url}/readyz")
    while answer.status_code != 200 and time.monotonic() < deadline:
        assert answer.status_code == 503, answer.text
        time.sleep(0.05)
        answer = http.get(f"{url}/readyz")
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def test_ready_once_serving_and_stopping_on_sigterm(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, address = notify_socket
    port = free_port()
    secret = tmp_path / "control.secret"
    config = tmp_path / "daemon.toml"
    config.write_text(
        f'database_url = "sqlite:///{tmp_path / "daemon.db"}"\n'
        'identifier = "host-notify"\n'
        'log_level = "info"\n'
        "[control]\n"
        f"port = {port}\n"
        f'secret_file = "{secret}"\n'
    )
    log = tmp_path / "daemon.log"
    env = child_env(tmp_path / "home", NOTIFY_SOCKET=address, PYTHONUNBUFFERED="1")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "calsched", "--config", str(config), "run"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            ready = _next_message(sock, proc, log)
            assert ready.splitlines()[0] == "READY=1", ready
            assert f"STATUS=serving http://127.0.0.1:{port}" in ready
            # At READY=1 the control API answers and the lease is ours, with no retry.
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(timeout=5.0) as http:
                assert http.get(f"{url}/healthz").status_code == 200
                token = admin_token(secret.read_bytes())
                status = http.get(f"{url}/v1/status", headers={"authorization": f"Bearer {token}"})
                assert status.status_code == 200
                assert status.json()["lease"]["state"] == "held"
                # Ready for work once the embedded backend answered a first heartbeat.
                ready = _until_ready(http, url)
                assert set(ready["checks"]) == {"journal", "lease", "backend"}
                scraped = http.get(f"{url}/metrics", headers={"authorization": f"Bearer {token}"})
                assert 'calsched_build_info{version="' in scraped.text

            proc.send_signal(signal.SIGTERM)
            assert _next_message(sock, proc, log) == "STOPPING=1"
            assert proc.wait(timeout=STEP_TIMEOUT_S) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
