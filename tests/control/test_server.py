"""Tests for calsched.control.server: the uvicorn server, its signals left to the daemon."""

from __future__ import annotations

import signal

from calsched.control import ControlServer, create_control_app, serve_control
from tests.control.fakes import SECRET, FakeTools


def test_serve_control_configures_a_loopback_server(tools: FakeTools) -> None:
    """serve_control returns an unstarted server on 127.0.0.1:8765 by default."""
    server = serve_control(create_control_app(tools, secret=SECRET))
    assert isinstance(server, ControlServer)
    assert (server.config.host, server.config.port) == ("127.0.0.1", 8765)
    assert server.config.proxy_headers is False
    other = serve_control(create_control_app(tools, secret=SECRET), host="::1", port=9000)
    assert (other.config.host, other.config.port) == ("::1", 9000)


def test_control_server_leaves_signals_alone(tools: FakeTools) -> None:
    """ControlServer installs no SIGTERM/SIGINT handlers: the daemon owns shutdown."""
    server = serve_control(create_control_app(tools, secret=SECRET))
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with server.capture_signals():
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
