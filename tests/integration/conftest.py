"""Fixtures for tests against real servers on loopback.

- ``calendar``: a :class:`~calsched.backend.calendar.LocalCalendar` in a migrated SQLite
  file (the calendar's SQL is covered on PostgreSQL by ``tests/test_calendar.py``).
- ``faults``: the :class:`~calsched.testing.FaultPlan` the reference backend obeys.
- ``backend_url``: the reference backend serving ``calendar`` under uvicorn on
  127.0.0.1, accepting the key ``api_key``.
- ``free_port`` (from tests/conftest.py) and ``child_env``: helpers for tests that start
  processes (a loopback port nothing listens on; an environment with none of the
  runner's ``CALSCHED_*`` and HOME and the XDG dirs under a temp dir).
- ``wake_host``: a webhook agent host on a free loopback port recording every wake
  (:class:`WakeRecorder`), and its wake URL.
- ``make_client``: :class:`~calsched.backend.http.HttpBackend` clients for that URL
  (``make_client(api_key=..., max_response_bytes=...)``), closed after the test. They have
  no deadline of their own (the scheduler owns it): bound a call in the test where needed.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from calsched.backend.calendar import LocalCalendar
from calsched.backend.http import HttpBackend
from calsched.backend.server import create_backend_app
from calsched.journal import Journal
from calsched.testing import FaultPlan, serve_backend
from tests.conftest import free_port as free_port  # re-exported for the integration tests

API_KEY = "integration-key-5a1c"


@pytest.fixture
def api_key() -> str:
    """The key the reference backend accepts."""
    return API_KEY


@pytest.fixture
def calendar(sqlite_journal: Journal) -> LocalCalendar:
    """An empty calendar in a migrated SQLite file."""
    return LocalCalendar(sqlite_journal.engine)


@pytest.fixture
def faults() -> FaultPlan:
    """The faults the reference backend applies to its next requests (none at first)."""
    return FaultPlan()


@pytest.fixture
async def backend_url(calendar: LocalCalendar, faults: FaultPlan) -> AsyncIterator[str]:
    """The reference backend's base URL, served on a free loopback port."""
    app = create_backend_app(calendar, API_KEY, faults=faults)
    async with serve_backend(app) as url:
        yield url


@pytest.fixture
async def make_client(backend_url: str) -> AsyncIterator[Callable[..., HttpBackend]]:
    """Build HttpBackend clients for the reference backend; closed after the test."""
    made: list[HttpBackend] = []

    def _make(*, api_key: str = API_KEY, **kwargs: Any) -> HttpBackend:
        client = HttpBackend(backend_url, api_key, **kwargs)
        made.append(client)
        return client

    yield _make
    for client in made:
        await client.aclose()


@dataclass
class WakeRecorder:
    """The agent host: records every wake it is sent, and accepts it."""

    wakes: list[dict[str, Any]] = field(default_factory=list)

    async def wake(self, request: Request) -> Response:
        self.wakes.append(await request.json())
        return JSONResponse({"accepted": True}, status_code=202)


@pytest.fixture
async def wake_host() -> AsyncIterator[tuple[WakeRecorder, str]]:
    """The webhook host under uvicorn on a free loopback port, and its wake URL."""
    recorder = WakeRecorder()
    app = Starlette(routes=[Route("/wake", recorder.wake, methods=["POST"])])
    async with serve_backend(app) as url:
        yield recorder, f"{url}/wake"


def child_env(home: Path, **extra: str) -> dict[str, str]:
    """A child process's environment: none of the runner's ``CALSCHED_*``, HOME and the
    XDG dirs under ``home``, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALSCHED_")}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        XDG_CACHE_HOME=str(home / ".cache"),
        **extra,
    )
    return env
