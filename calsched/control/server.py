"""Serving the control API: a uvicorn server that leaves the signals to the daemon."""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp


class ControlServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT/SIGTERM to its owner.

    uvicorn's own handlers would take the signals from the daemon, whose shutdown must stop
    the scheduler and flush the outbox first; the owner stops this server by setting
    ``should_exit = True``.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Install no signal handlers (see the class docstring)."""
        yield


def serve_control(app: ASGIApp, host: str = "127.0.0.1", port: int = 8765) -> ControlServer:
    """A :class:`ControlServer` for ``app``, configured but not started.

    Run it with ``await server.serve()``; stop it with ``server.should_exit = True``.
    Logging is left to the application (no uvicorn log config, no access log) and no
    proxy headers are trusted.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    return ControlServer(config)
