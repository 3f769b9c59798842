"""Tests for calsched.host.webhook: wakes and agent lists over httpx.MockTransport."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from calsched.errors import ConfigError, WakeFailedError
from calsched.host import WebhookHost, parse_agent_list
from calsched.host.webhook import MAX_AGENT_LIST_BYTES
from calsched.journal import Journal
from calsched.model import AgentReport, AgentStatus, Slot, SlotState, parse
from calsched.ports import Host, WakeRequest
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend

WAKE_URL = "http://host.test/wake"
AGENTS_URL = "http://host.test/agents"
TOKEN = "host-token-s3cret"
REQUEST = WakeRequest(
    agent_id="bob",
    message="Write today's report",
    source="calendar:slot-s-18",
    slot_id="s-18",
    attempt=1,
)

Handler = Callable[[httpx.Request], Any]


class Recorder:
    """A MockTransport handler that records requests and answers as told."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        result = self.answer(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, httpx.Response)
        return result


@pytest.fixture
async def make_host() -> AsyncIterator[Callable[..., tuple[WebhookHost, Recorder]]]:
    hosts: list[WebhookHost] = []

    def make(answer: Handler, **kwargs: Any) -> tuple[WebhookHost, Recorder]:
        recorder = Recorder(answer)
        kwargs.setdefault("agents_url", AGENTS_URL)
        host = WebhookHost(WAKE_URL, transport=httpx.MockTransport(recorder), **kwargs)
        hosts.append(host)
        return host, recorder

    yield make
    for host in hosts:
        await host.aclose()


def test_webhook_host_is_a_host() -> None:
    """WebhookHost satisfies the Host port (checked by mypy through this assignment)."""
    host: Host = WebhookHost(WAKE_URL)
    assert isinstance(host, WebhookHost)


@pytest.mark.parametrize("status", [200, 202, 204])
async def test_2xx_accepts_the_wake(make_host: Any, status: int) -> None:
    """Any 2xx answer accepts the wake; the body is WakeRequest.to_wire() as JSON."""
    host, recorder = make_host(lambda request: httpx.Response(status))
    await host.wake_agent(REQUEST)
    (sent,) = recorder.requests
    assert sent.method == "POST"
    assert str(sent.url) == WAKE_URL
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.content) == {
        "agent_id": "bob",
        "message": "Write today's report",
        "source": "calendar:slot-s-18",
        "slot_id": "s-18",
        "attempt": 1,
    }
    assert "authorization" not in sent.headers


async def test_token_goes_in_the_bearer_header(make_host: Any) -> None:
    """A host token is sent as Authorization: Bearer on wakes and agent lists."""
    host, recorder = make_host(
        lambda request: httpx.Response(200, json={"agents": []}), token=TOKEN
    )
    await host.wake_agent(REQUEST)
    await host.list_agents()
    assert [r.headers["authorization"] for r in recorder.requests] == [f"Bearer {TOKEN}"] * 2


async def test_the_wakes_trace_context_goes_in_its_headers(make_host: Any) -> None:
    """A wake's W3C trace context is sent as headers, outside the body; it cannot replace
    the host token, and a wake without one sends no traceparent."""
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    trace = {"traceparent": traceparent, "tracestate": "v=1", "Authorization": "Bearer x"}
    host, recorder = make_host(lambda request: httpx.Response(202), token=TOKEN)
    await host.wake_agent(dataclasses.replace(REQUEST, trace=trace))
    await host.wake_agent(REQUEST)
    traced, plain = recorder.requests
    assert traced.headers["traceparent"] == traceparent
    assert traced.headers["tracestate"] == "v=1"
    assert traced.headers["authorization"] == f"Bearer {TOKEN}"
    assert "traceparent" not in json.loads(traced.content)
    assert "traceparent" not in plain.headers


@pytest.mark.parametrize("status", [500, 503, 404, 401, 302, 100 + 99])
async def test_non_2xx_fails_the_wake(make_host: Any, status: int) -> None:
    """A non-2xx answer (redirects included: they are not followed) is a failed wake."""
    host, recorder = make_host(
        lambda request: httpx.Response(status, headers={"Location": "http://elsewhere.test/"}),
        token=TOKEN,
    )
    with pytest.raises(WakeFailedError) as info:
        await host.wake_agent(REQUEST)
    assert info.value.agent_id == "bob"
    assert info.value.cause == f"HTTP {status}"
    assert str(info.value) == f"wake-agent failed: HTTP {status}"
    assert len(recorder.requests) == 1


async def test_connection_error_fails_the_wake(make_host: Any) -> None:
    """A connection error is a failed wake with a short cause, never the token."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    host, _ = make_host(refuse, token=TOKEN)
    with pytest.raises(WakeFailedError, match=r"^wake-agent failed: connection refused$") as info:
        await host.wake_agent(REQUEST)
    assert TOKEN not in str(info.value)


async def test_real_refused_connection_says_refused() -> None:
    """Against a closed loopback port the cause is "connection refused", not httpx's text."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    host = WebhookHost(f"http://127.0.0.1:{port}/wake")
    try:
        with pytest.raises(WakeFailedError) as info:
            await host.wake_agent(REQUEST)
    finally:
        await host.aclose()
    assert info.value.cause == "connection refused"


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (httpx.ConnectError("boom"), "connection failed: boom"),
        (httpx.ConnectError(""), "connection failed"),
        (httpx.RemoteProtocolError("peer closed"), "RemoteProtocolError: peer closed"),
        (httpx.ReadError("x" * 500), "ReadError: " + "x" * 188 + "…"),
    ],
)
async def test_other_transport_errors_give_short_causes(
    make_host: Any, error: httpx.TransportError, cause: str
) -> None:
    """Other network failures name their kind, truncated to a short line."""

    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    host, _ = make_host(fail)
    with pytest.raises(WakeFailedError) as info:
        await host.wake_agent(REQUEST)
    assert info.value.cause == cause


async def test_requests_carry_no_timeout_of_their_own(make_host: Any) -> None:
    """The adapter sets no httpx timeout: the scheduler's wake_timeout_s is the only one."""
    host, recorder = make_host(lambda request: httpx.Response(200, json={"agents": []}))
    await host.wake_agent(REQUEST)
    await host.list_agents()
    unbounded = {"connect": None, "read": None, "write": None, "pool": None}
    assert [r.extensions["timeout"] for r in recorder.requests] == [unbounded, unbounded]


async def test_a_hanging_wake_is_cut_by_the_scheduler_alone(db_url: str, make_host: Any) -> None:
    """The scheduler cuts a hanging webhook at its wake_timeout_s, with its one message.

    The host's request is cancelled (its stream closed), not left running behind the
    failed wake.
    """
    cancelled = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return httpx.Response(200)

    host, _ = make_host(hang)
    Journal.open(db_url, "host-a", upgrade=True).close()
    journal = Journal.open(db_url, "host-a")
    backend = InMemoryBackend([parse(Slot, {"id": "s1", "agent_id": "bob", "title": "t"})])
    settings = SchedulerSettings(identifier="host-a", wake_timeout_s=0.2)
    try:
        async with Scheduler(settings, journal, backend, host) as sched:
            await sched.heartbeat_once()
            await sched.idle()
            view = journal.get("s1")
    finally:
        journal.close()
    assert view is not None
    assert view.state is SlotState.aborted
    assert view.reason == "wake-agent failed: timeout after 0.2s"
    assert cancelled.is_set()


async def test_a_transport_timeout_is_a_transport_error(make_host: Any) -> None:
    """A timeout a transport raises itself is named by its kind, like any network error."""

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    host, _ = make_host(timeout)
    with pytest.raises(WakeFailedError) as info:
        await host.wake_agent(REQUEST)
    assert info.value.cause == "ReadTimeout: read timed out"


def test_repr_hides_the_token_and_url_credentials() -> None:
    """repr names the URLs without credentials or query, and only says a token is set."""
    host = WebhookHost("http://user:pw@host.test/wake?key=k1", token=TOKEN)
    text = repr(host)
    assert TOKEN not in text
    assert "pw" not in text
    assert "k1" not in text
    assert "token=set" in text
    assert "host.test/wake" in text
    assert "timeout" not in text  # the scheduler owns the deadline
    assert "token=none" in repr(WebhookHost(WAKE_URL))


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [
        ("ftp://host.test/wake", {}),
        ("/relative/wake", {}),
        ("http://host:notaport/wake", {}),
        (WAKE_URL, {"agents_url": "file:///etc/passwd"}),
    ],
)
def test_unusable_configuration_is_a_config_error(url: str, kwargs: dict[str, Any]) -> None:
    """Bad URLs are refused at construction."""
    with pytest.raises(ConfigError):
        WebhookHost(url, **kwargs)


# -- list_agents ----------------------------------------------------------------------


async def test_list_agents_validates_entries(
    make_host: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Valid agents are returned; invalid entries are skipped and logged."""
    body = {
        "agents": [
            {"id": "bob", "model": "claude-x", "status": "idle", "extra": 1},
            {"id": "", "status": "idle"},
            {"id": "carol", "status": "sleeping"},
            "dave",
            {"id": "erin"},
        ]
    }
    host, recorder = make_host(lambda request: httpx.Response(200, json=body))
    with caplog.at_level(logging.WARNING, logger="calsched.host"):
        agents = await host.list_agents()
    assert agents == [
        AgentReport(id="bob", model="claude-x", status=AgentStatus.idle),
        AgentReport(id="erin", status=AgentStatus.unknown),
    ]
    assert recorder.requests[0].method == "GET"
    assert str(recorder.requests[0].url) == AGENTS_URL
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 3
    assert "agents[1]" in skipped[0]


async def test_list_agents_without_url_is_empty(make_host: Any) -> None:
    """Without agents_url the list is empty and nothing is requested."""
    host, recorder = make_host(lambda request: httpx.Response(500), agents_url=None)
    assert await host.list_agents() == []
    assert recorder.requests == []


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(503),
        httpx.Response(204),
        httpx.Response(200, content=b"<html>"),
        httpx.Response(200, json=["bob"]),
        httpx.Response(200, json={"agents": {"id": "bob"}}),
        httpx.Response(200, json={"nothing": []}),
        httpx.Response(200, content=b" " * (MAX_AGENT_LIST_BYTES + 1)),
    ],
    ids=["503", "204", "not json", "array", "agents not list", "no agents", "too large"],
)
async def test_failed_agent_list_is_empty_and_logged(
    make_host: Any, response: httpx.Response, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing or malformed agent list gives [] and a log line, never an exception."""
    host, _ = make_host(lambda request: response, token=TOKEN)
    with caplog.at_level(logging.WARNING, logger="calsched.host"):
        assert await host.list_agents() == []
    assert caplog.records
    assert TOKEN not in caplog.text


async def test_agent_list_connection_error_is_empty(
    make_host: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A network failure while listing agents gives [] and a log line."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    host, _ = make_host(refuse)
    with caplog.at_level(logging.WARNING, logger="calsched.host"):
        assert await host.list_agents() == []
    assert "connection refused" in caplog.text


class Trickle(httpx.AsyncByteStream):
    """An agent list that trickles in a byte at a time; records being closed."""

    def __init__(self) -> None:
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"agents": ['
        for _ in range(1000):
            await asyncio.sleep(0.01)
            yield b" "
        yield b"]}"

    async def aclose(self) -> None:
        self.closed = True


async def test_a_cancelled_agent_list_closes_its_stream(make_host: Any) -> None:
    """Cut off from outside (as the heartbeat does at wake_timeout_s), the list lets the
    cancellation through and closes the half-read answer."""
    stream = Trickle()
    host, _ = make_host(lambda request: httpx.Response(200, stream=stream))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await host.list_agents()
    assert stream.closed


def test_parse_agent_list_accepts_an_empty_list() -> None:
    """{"agents": []} is a valid, empty list."""
    assert parse_agent_list({"agents": []}, origin="test") == []


async def test_aclose_closes_the_client() -> None:
    """After aclose the host sends nothing more."""
    host = WebhookHost(WAKE_URL, transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    await host.aclose()
    with pytest.raises(RuntimeError):
        await host.wake_agent(REQUEST)


def test_host_package_surface() -> None:
    """calsched.host re-exports exactly its adapters, with a sorted __all__."""
    import calsched.host

    assert calsched.host.__all__ == [
        "CommandHost",
        "ConsoleHost",
        "WebhookHost",
        "parse_agent_list",
    ]
    assert calsched.host.__all__ == sorted(calsched.host.__all__)
