"""Fixtures of the control API tests: fake tools, a metrics registry, an in-process client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from calsched.control import create_control_app
from calsched.metrics import Metrics
from calsched.model import SlotState
from tests.control.fakes import SECRET, FakeTools, _view


@pytest.fixture
def tools() -> FakeTools:
    fake = FakeTools()
    fake.slots["alice"] = _view("s-1", "alice", SlotState.in_progress)
    fake.slots["bob"] = _view("s-2", "bob", SlotState.in_progress)
    return fake


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def client(tools: FakeTools, metrics: Metrics) -> AsyncIterator[httpx.AsyncClient]:
    app = create_control_app(tools, secret=SECRET, metrics=metrics)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        yield http
