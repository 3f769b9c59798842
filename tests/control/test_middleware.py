"""Tests for calsched.control.middleware: the Host check, and a span per traced request."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette

from calsched.control import create_control_app
from calsched.model import SlotState
from calsched.tracing import OtelTracing
from tests.control.fakes import ADMIN, BOB, SECRET, FakeTools, _view, auth


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8765",
        "127.0.0.1.evil.example",
        "localhost.evil.example:80",
        "127.0.0.1:notaport",
        "user@127.0.0.1",
        "[::2]:8765",
        "",
    ],
)
@pytest.mark.parametrize("path", ["/healthz", "/v1/status", "/v1/agents/alice/slot", "/nowhere"])
async def test_foreign_host_header_is_refused(
    client: httpx.AsyncClient, tools: FakeTools, host: str, path: str
) -> None:
    """Any Host but a loopback name we serve is 403 forbidden_host, on every route."""
    response = await client.get(path, headers={"Host": host, **auth(ADMIN)})
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden_host"
    assert tools.calls == []


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.1:8765", "localhost:8765", "LOCALHOST", "[::1]:8765", "[::1]"]
)
async def test_loopback_host_headers_pass(client: httpx.AsyncClient, host: str) -> None:
    """The loopback names pass the Host check, with or without a port, in any case."""
    response = await client.get("/healthz", headers={"Host": host})
    assert response.status_code == 200


async def _raw_get(app: Starlette, headers: list[tuple[bytes, bytes]]) -> int:
    """GET /healthz straight through ASGI with exactly these headers; the status."""
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8765),
    }
    await app(scope, receive, send)
    status: int = sent[0]["status"]
    return status


async def test_missing_or_doubled_host_header_is_refused(tools: FakeTools) -> None:
    """A request with no Host header, or two, is refused (raw ASGI: httpx always sends one)."""
    app = create_control_app(tools, secret=SECRET)
    assert await _raw_get(app, [(b"host", b"127.0.0.1")]) == 200
    assert await _raw_get(app, []) == 403
    assert await _raw_get(app, [(b"host", b"127.0.0.1"), (b"host", b"evil.example")]) == 403


async def test_allowed_hosts_can_be_configured(tools: FakeTools) -> None:
    """allowed_hosts replaces the loopback defaults."""
    app = create_control_app(tools, secret=SECRET, allowed_hosts=["calsched.internal"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://calsched.internal") as http:
        assert (await http.get("/healthz")).status_code == 200
        refused = await http.get("/healthz", headers={"Host": "127.0.0.1"})
    assert refused.status_code == 403


async def test_traced_calls_are_server_spans() -> None:
    """With tracing on, a call is a server span named by its route; a traceparent makes it
    the caller's child, none starts a trace; 4xx is no error, 5xx is."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tools = FakeTools()
    tools.slots["bob"] = _view("s-2", "bob", SlotState.in_progress)
    app = create_control_app(tools, secret=SECRET, tracing=OtelTracing(provider))
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        await client.get("/v1/agents/bob/slot", headers={**auth(BOB), "traceparent": caller})
        await client.get("/v1/agents/alice/slot", headers=auth(BOB))
        tools.fail_with = RuntimeError("boom")
        await client.get("/v1/agents/bob/slot", headers=auth(BOB))
    continued, refused, failed = exporter.get_finished_spans()
    assert continued.name == "GET /v1/agents/{agent_id:path}/slot"
    assert continued.kind is SpanKind.SERVER
    assert continued.parent is not None
    assert (continued.parent.trace_id, continued.parent.span_id) == (
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
    )
    assert continued.attributes is not None
    assert continued.attributes["http.response.status_code"] == 200
    assert refused.parent is None
    assert refused.attributes is not None
    assert refused.attributes["http.response.status_code"] == 403
    assert refused.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "HTTP 500"


def test_tracing_off_adds_no_middleware(tools: FakeTools) -> None:
    """Off, the app has no trace layer at all (not even a pass-through)."""
    off = create_control_app(tools, secret=SECRET)
    on = create_control_app(tools, secret=SECRET, tracing=OtelTracing(TracerProvider()))
    assert len(on.user_middleware) == len(off.user_middleware) + 1
