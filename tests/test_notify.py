"""The sd_notify client: datagrams on a real AF_UNIX socket, nothing without NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from calsched.notify import NOTIFY_SOCKET, Notifier


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound in a short temp dir (AF_UNIX paths are capped at 108)."""
    with tempfile.TemporaryDirectory(prefix="cs-") as root:
        path = os.path.join(root, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2.0)
        try:
            yield sock, path
        finally:
            sock.close()


def test_ready_sends_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier(path)
    assert notifier.enabled
    assert notifier.ready("serving http://127.0.0.1:8765")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving http://127.0.0.1:8765"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_abstract_address() -> None:
    name = f"calsched-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        assert Notifier("@" + name).status("standing by")
        assert sock.recv(4096) == b"STATUS=standing by"


def test_without_socket_nothing_happens() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.stopping()


def test_from_env_unset_removes_the_variable(listener: tuple[socket.socket, str]) -> None:
    _, path = listener
    env = {NOTIFY_SOCKET: path, "OTHER": "x"}
    notifier = Notifier.from_env(env, unset=True)
    assert notifier.address == path
    assert env == {"OTHER": "x"}
    kept = {NOTIFY_SOCKET: path}
    assert Notifier.from_env(kept).address == path
    assert kept == {NOTIFY_SOCKET: path}


def test_a_failed_send_warns_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))
    with caplog.at_level(logging.WARNING, logger="calsched.notify"):
        assert not notifier.ready()
        assert not notifier.stopping()
    lines = [r.getMessage() for r in caplog.records if r.name == "calsched.notify"]
    assert len(lines) == 1
    assert "systemd notification failed" in lines[0]


def test_unsupported_address_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="calsched.notify"):
        assert not Notifier("vsock:2:1234").ready()
    assert "unsupported address" in caplog.text
