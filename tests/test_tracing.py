"""Traces: the spans of a scheduler cycle, their attributes and parents, and tracing off.

The spans are read back from the SDK's in-memory exporter. The scheduler tests run on
SQLite and PostgreSQL (``db_url``); that tracing off imports nothing is
``tests/integration/test_tracing_off.py`` (a fresh interpreter).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from calsched import tracing
from calsched.control import create_control_app
from calsched.errors import BackendUnavailableError, ConfigError, NoActiveSlotError
from calsched.journal import Journal
from calsched.model import Actor, SlotState
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost
from calsched.tokens import agent_token
from calsched.tracing import NO_TRACE, NO_TRACING, OtelTracing, open_tracing
from tests.conftest import build_slot

SECRET = b"s" * 32
#: A caller's span (W3C example ids): the trace the control API must continue.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Where the spans of :func:`traced` end up."""
    return InMemorySpanExporter()


@pytest.fixture
def traced(exporter: InMemorySpanExporter) -> Iterator[OtelTracing]:
    """Tracing on, exporting every span as it ends to ``exporter``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    on = OtelTracing(provider)
    yield on
    on.close()


@pytest.fixture
async def scheduler(db_url: str, traced: OtelTracing) -> AsyncIterator[Scheduler]:
    """A traced scheduler with one slot to fire for agent ``bob``, not started."""
    journal = Journal.open(db_url, "host-a", upgrade=True)
    backend = InMemoryBackend([build_slot("s1", "bob"), build_slot("s2", "bob")])
    sched = Scheduler(
        SchedulerSettings(identifier="host-a"), journal, backend, InMemoryHost(), tracing=traced
    )
    yield sched
    await sched.stop()
    journal.close()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def ids_in(traceparent: str) -> tuple[str, str]:
    """The trace and span ids a ``traceparent`` names (its flags aside)."""
    version, trace_id, span_id, _flags = traceparent.split("-")
    assert version == "00"
    return trace_id, span_id


def parent_of(span: ReadableSpan) -> tuple[str, str] | None:
    if span.parent is None:
        return None
    return f"{span.parent.trace_id:032x}", f"{span.parent.span_id:016x}"


# -- tracing off -------------------------------------------------------------------------


def test_off_is_one_shared_object_doing_nothing() -> None:
    """Off, every span is the same object, headers are empty, and nothing is recorded."""
    first = NO_TRACING.span("a", {"k": 1}, kind="client", parent={"traceparent": TRACEPARENT})
    with first as span:
        span.set("k", 2)
        span.fail("no")
        span.rename("b")
    assert first is NO_TRACING.span("b")
    assert NO_TRACING.headers() is NO_TRACE
    assert not NO_TRACING.enabled
    NO_TRACING.close()


def test_off_never_calls_lazy_attributes() -> None:
    """Attributes given as a function are not computed when tracing is off."""

    def boom() -> dict[str, tracing.AttributeValue]:
        raise AssertionError("called")

    with NO_TRACING.span("a", boom):
        pass


@pytest.mark.parametrize(
    ("enabled", "environ"),
    [(False, {"OTEL_TRACES_EXPORTER": "console"}), (True, {"OTEL_SDK_DISABLED": "TRUE"})],
    ids=["not-enabled", "sdk-disabled"],
)
def test_open_tracing_off(enabled: bool, environ: dict[str, str]) -> None:
    """Tracing is off unless enabled, and OTEL_SDK_DISABLED=true wins over the setting."""
    assert open_tracing(enabled, environ=environ) is NO_TRACING


# -- opening it --------------------------------------------------------------------------


def test_open_tracing_exports_nowhere_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    """Enabled without an exporter: spans are made (context flows on) but sent nowhere."""
    on = open_tracing(True, identifier="host-a", environ={})
    assert isinstance(on, OtelTracing)
    with on.span("calsched.test-span"):
        assert ids_in(on.headers()["traceparent"])
    assert on.provider.resource.attributes["service.instance.id"] == "host-a"
    on.close()
    assert "calsched.test-span" not in capsys.readouterr().out


def test_open_tracing_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service is ``calsched`` unless OTEL_SERVICE_NAME names another."""
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    on = open_tracing(True, environ={})
    assert isinstance(on, OtelTracing)
    assert on.provider.resource.attributes["service.name"] == "calsched"
    on.close()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sched-eu")
    on = open_tracing(True, environ={})
    assert isinstance(on, OtelTracing)
    assert on.provider.resource.attributes["service.name"] == "sched-eu"
    on.close()


@pytest.mark.parametrize(
    ("setting", "environ"),
    [("console", {}), (None, {"OTEL_TRACES_EXPORTER": "console"})],
    ids=["setting", "env"],
)
def test_open_tracing_console(
    setting: str | None, environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The console exporter is taken from the setting, else from OTEL_TRACES_EXPORTER."""
    on = open_tracing(True, setting, environ=environ)
    with on.span("calsched.test-span"):
        pass
    on.close()  # flushes the batch
    assert '"name": "calsched.test-span"' in capsys.readouterr().out


def test_open_tracing_refuses_an_unknown_exporter() -> None:
    """An exporter name that is not none, console or otlp is a one-line ConfigError."""
    with pytest.raises(ConfigError, match="'jaeger' is not one of: none, console, otlp"):
        open_tracing(True, environ={"OTEL_TRACES_EXPORTER": "console,jaeger"})


def test_open_tracing_otlp_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTLP without its exporter package installed says which package to install."""
    monkeypatch.setattr(tracing, "_OTLP_MODULE", "calsched._no_such_exporter")
    with pytest.raises(ConfigError, match="pip install opentelemetry-exporter-otlp-proto-http"):
        open_tracing(True, "otlp", environ={})


def test_open_tracing_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """tracing = true without the SDK installed names the extra to install."""
    import sys

    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(ConfigError, match=r"pip install 'calsched\[otel\]'"):
        open_tracing(True, environ={})


# -- spans -------------------------------------------------------------------------------


def test_parent_headers_continue_a_trace(
    traced: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    """A span given W3C headers is their child; headers() then names the new span."""
    with traced.span("child", parent={"traceparent": TRACEPARENT}, kind="server"):
        headers = dict(traced.headers())
    (span,) = exporter.get_finished_spans()
    assert parent_of(span) == (CALLER_TRACE, CALLER_SPAN)
    assert span.kind is SpanKind.SERVER
    assert set(headers) == {"traceparent"}
    assert ids_in(headers["traceparent"]) == hex_ids(span)


def test_empty_parent_starts_a_new_trace(
    traced: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    """Empty parent headers make a root span even inside another span."""
    with traced.span("outer"), traced.span("root", parent=NO_TRACE):
        pass
    root, outer = exporter.get_finished_spans()
    assert root.parent is None
    assert hex_ids(root)[0] != hex_ids(outer)[0]


def test_an_exception_fails_the_span(traced: OtelTracing, exporter: InMemorySpanExporter) -> None:
    """An error leaving the span is recorded on it."""
    with pytest.raises(NoActiveSlotError), traced.span("x"):
        raise NoActiveSlotError("bob")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.events[0].name == "exception"


# -- a scheduler cycle -------------------------------------------------------------------


async def test_heartbeat_wake_and_delivery_spans(
    scheduler: Scheduler, exporter: InMemorySpanExporter
) -> None:
    """A beat is a span; the wake it starts is its child, with the slot's attributes, and
    hands the host its trace context; each delivery is a trace of its own."""
    assert await scheduler.heartbeat_once()
    await scheduler.idle()
    (beat,) = named(exporter, "calsched.heartbeat")
    (wake,) = named(exporter, "calsched.wake")
    assert beat.kind is SpanKind.CLIENT
    assert beat.attributes == {"calsched.identifier": "host-a", "calsched.actor": "scheduler"}
    assert parent_of(wake) == hex_ids(beat)
    assert wake.attributes == {
        "calsched.slot_id": "s1",
        "calsched.attempt": 1,
        "calsched.agent_id": "bob",
        "calsched.actor": "scheduler",
    }
    assert wake.status.status_code is StatusCode.UNSET
    host = scheduler.host
    assert isinstance(host, InMemoryHost)
    trace_id, span_id = hex_ids(wake)
    assert set(host.wakes[0].trace) == {"traceparent"}
    assert ids_in(host.wakes[0].trace["traceparent"]) == (trace_id, span_id)
    deliveries = named(exporter, "calsched.outbox.deliver")
    assert deliveries, "in_progress is told to the backend"
    for span in deliveries:
        assert span.parent is None
        assert span.kind is SpanKind.CLIENT
        assert span.attributes is not None
        assert span.attributes["calsched.slot_id"] == "s1"
        assert span.attributes["calsched.attempt"] == 1
        assert span.attributes["calsched.actor"] == "scheduler"
    assert {s.attributes["calsched.status"] for s in deliveries if s.attributes} >= {
        SlotState.in_progress.value
    }


async def test_failed_wake_and_failed_beat_are_failed_spans(
    scheduler: Scheduler, exporter: InMemorySpanExporter
) -> None:
    """A wake the host refused and a beat the backend failed end in ERROR, with the cause."""
    host, backend = scheduler.host, scheduler.backend
    assert isinstance(host, InMemoryHost)
    assert isinstance(backend, InMemoryBackend)
    host.fail_wakes("bob", "host said no")
    assert await scheduler.heartbeat_once()
    await scheduler.idle()
    wakes = named(exporter, "calsched.wake")
    assert wakes[0].status.status_code is StatusCode.ERROR
    assert wakes[0].status.description == "wake-agent failed: host said no"
    backend.fail_heartbeat(BackendUnavailableError("HTTP 503"))
    assert not await scheduler.heartbeat_once()
    failed = named(exporter, "calsched.heartbeat")[-1]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "HTTP 503"


async def test_control_call_continues_the_callers_trace_to_the_next_wake(
    scheduler: Scheduler, traced: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    """A tool call with a traceparent: server span -> tool span -> the next slot's wake,
    all in the caller's trace, and the host gets that trace's context."""
    assert await scheduler.heartbeat_once()
    await scheduler.idle()
    exporter.clear()
    app = create_control_app(scheduler, secret=SECRET, tracing=traced)
    headers = {
        "Authorization": f"Bearer {agent_token(SECRET, 'bob')}",
        "traceparent": TRACEPARENT,
        "tracestate": "vendor=1",
    }
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        answer = await client.post(
            "/v1/agents/bob/slot/complete", json={"summary": "done"}, headers=headers
        )
    assert answer.status_code == 200
    await scheduler.idle()
    (server,) = named(exporter, "POST /v1/agents/{agent_id:path}/slot/complete")
    (tool,) = named(exporter, "calsched.tool complete")
    (wake,) = named(exporter, "calsched.wake")
    assert server.kind is SpanKind.SERVER
    assert parent_of(server) == (CALLER_TRACE, CALLER_SPAN)
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/v1/agents/{agent_id:path}/slot/complete"
    assert parent_of(tool) == hex_ids(server)
    assert tool.attributes == {
        "calsched.slot_id": "s1",
        "calsched.attempt": 1,
        "calsched.agent_id": "bob",
        "calsched.actor": Actor.agent.value,
    }
    assert parent_of(wake) == hex_ids(tool)
    assert wake.attributes is not None
    assert wake.attributes["calsched.slot_id"] == "s2"
    host = scheduler.host
    assert isinstance(host, InMemoryHost)
    sent = host.wakes[-1].trace
    assert ids_in(sent["traceparent"]) == (CALLER_TRACE, hex_ids(wake)[1])
    assert sent["tracestate"] == "vendor=1"


async def test_a_refused_tool_call_is_a_failed_span(
    scheduler: Scheduler, exporter: InMemorySpanExporter
) -> None:
    """A tool call for an agent with no slot is a span naming the agent, in ERROR."""
    with pytest.raises(NoActiveSlotError):
        await scheduler.pause("carol", "waiting")
    (tool,) = named(exporter, "calsched.tool pause")
    assert tool.attributes == {"calsched.agent_id": "carol", "calsched.actor": "agent"}
    assert tool.status.status_code is StatusCode.ERROR
