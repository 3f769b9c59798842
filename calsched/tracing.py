"""OpenTelemetry traces, optional: the ``calsched[otel]`` extra, switched on by ``tracing``.

Off (the default; or ``OTEL_SDK_DISABLED=true``), :data:`NO_TRACING` answers every call
with one shared object that does nothing: ``opentelemetry`` is never imported and a span
costs a method call. On, :class:`OtelTracing` makes spans with a ``TracerProvider`` of its
own (never the process-global one, so an embedding application's provider is left alone
and each test can hold an in-memory exporter) and reads and writes W3C trace context
(``traceparent``, ``tracestate``) with the trace-context propagator alone.

Spans (docs/operations.md, "Tracing"): ``calsched.heartbeat``, ``calsched.wake``,
``calsched.tool <trigger>``, ``calsched.outbox.deliver`` and the control API's server
span. A slot's spans carry ``calsched.slot_id``, ``calsched.attempt``,
``calsched.agent_id`` and ``calsched.actor``. Spans that wrap an effect (a wake, a
delivery) start after the transition behind it committed, as the effect itself does.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, Protocol

from calsched._version import __version__
from calsched.errors import ConfigError
from calsched.model import Actor, SlotView

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span as OtelSpan

__all__ = [
    "EXPORTERS",
    "NO_TRACE",
    "NO_TRACING",
    "AttributeValue",
    "Attributes",
    "Kind",
    "OtelTracing",
    "Span",
    "Tracing",
    "open_tracing",
]

AttributeValue = str | int | float | bool
#: What a span stands for: work inside calsched, a request it serves, a call it makes.
Kind = Literal["internal", "server", "client"]
#: A span's attributes, or a function making them (called only when tracing is on).
Attributes = Mapping[str, AttributeValue] | Callable[[], Mapping[str, AttributeValue]]
#: The exporters ``tracing_exporter`` (or ``OTEL_TRACES_EXPORTER``) may name.
EXPORTERS = ("none", "console", "otlp")
#: The trace context of no trace: what :meth:`Tracing.headers` gives when off.
NO_TRACE: Mapping[str, str] = MappingProxyType({})
_OTLP_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


class Span(Protocol):
    """What calsched does with an open span."""

    def set(self, key: str, value: AttributeValue) -> None:
        """Record one attribute."""
        ...

    def fail(self, description: str) -> None:
        """Mark the span failed, with a short cause (never a secret)."""
        ...

    def rename(self, name: str) -> None:
        """Give the span the name known only once it ran (a route's template)."""
        ...


class _NoSpan:
    """The span of tracing off: a context manager and a span in one, doing nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def set(self, key: str, value: AttributeValue) -> None:
        """Nothing to record."""

    def fail(self, description: str) -> None:
        """Nothing to mark."""

    def rename(self, name: str) -> None:
        """Nothing to name."""


_NO_SPAN = _NoSpan()


class Tracing:
    """Tracing off: every span is the same do-nothing object (:data:`NO_TRACING`).

    :class:`OtelTracing` is the same interface, on. Components take a ``Tracing`` and
    never ask which one they hold.
    """

    #: Whether spans are recorded (callers need not check: off costs nothing anyway).
    enabled = False

    def span(
        self,
        name: str,
        attributes: Attributes | None = None,
        *,
        kind: Kind = "internal",
        parent: Mapping[str, str] | None = None,
    ) -> AbstractContextManager[Span]:
        """A span around a block, the current span's child.

        ``attributes`` may be a function, called only when tracing is on. ``parent``,
        when given, holds the W3C headers to continue instead (an empty or invalid one
        starts a new trace).
        """
        return _NO_SPAN

    def slot_span(
        self,
        name: str,
        view: SlotView,
        actor: Actor,
        *,
        kind: Kind = "internal",
        parent: Mapping[str, str] | None = None,
    ) -> AbstractContextManager[Span]:
        """:meth:`span` with the slot's id, attempt and agent and the actor as attributes
        (built only when tracing is on)."""
        return _NO_SPAN

    def headers(self) -> Mapping[str, str]:
        """The W3C trace-context headers of the current span, for the next hop."""
        return NO_TRACE

    def close(self) -> None:
        """Export what is buffered and stop (at shutdown)."""


#: Tracing off. A constant: it holds no state.
NO_TRACING = Tracing()


def slot_attributes(view: SlotView, actor: Actor) -> dict[str, AttributeValue]:
    """A slot's span attributes."""
    return {
        "calsched.slot_id": view.slot_id,
        "calsched.attempt": view.attempt,
        "calsched.agent_id": view.agent_id,
        "calsched.actor": actor.value,
    }


class _Recorded:
    """An OpenTelemetry span behind the :class:`Span` protocol."""

    __slots__ = ("_span",)

    def __init__(self, span: OtelSpan) -> None:
        self._span = span

    def set(self, key: str, value: AttributeValue) -> None:
        """Record one attribute."""
        self._span.set_attribute(key, value)

    def fail(self, description: str) -> None:
        """Mark the span failed."""
        from opentelemetry.trace import Status, StatusCode

        self._span.set_status(Status(StatusCode.ERROR, description))

    def rename(self, name: str) -> None:
        """Rename the span."""
        self._span.update_name(name)


class OtelTracing(Tracing):
    """Tracing on: spans of ``provider``'s tracer, W3C trace context in and out."""

    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self._tracer = provider.get_tracer("calsched", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._kinds = {
            "internal": SpanKind.INTERNAL,
            "server": SpanKind.SERVER,
            "client": SpanKind.CLIENT,
        }

    @contextmanager
    def _span(
        self,
        name: str,
        attributes: Attributes | None,
        kind: Kind,
        parent: Mapping[str, str] | None,
    ) -> Iterator[Span]:
        context = None if parent is None else self._propagator.extract(parent)
        if callable(attributes):
            attributes = attributes()
        with self._tracer.start_as_current_span(
            name, context=context, kind=self._kinds[kind], attributes=attributes
        ) as span:
            yield _Recorded(span)

    def span(
        self,
        name: str,
        attributes: Attributes | None = None,
        *,
        kind: Kind = "internal",
        parent: Mapping[str, str] | None = None,
    ) -> AbstractContextManager[Span]:
        """A recorded span (see :meth:`Tracing.span`)."""
        return self._span(name, attributes, kind, parent)

    def slot_span(
        self,
        name: str,
        view: SlotView,
        actor: Actor,
        *,
        kind: Kind = "internal",
        parent: Mapping[str, str] | None = None,
    ) -> AbstractContextManager[Span]:
        """A recorded span with the slot's attributes (see :meth:`Tracing.slot_span`)."""
        return self._span(name, slot_attributes(view, actor), kind, parent)

    def headers(self) -> Mapping[str, str]:
        """``traceparent`` (and ``tracestate``) of the current span; empty if none."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return carrier

    def close(self) -> None:
        """Flush the exporters and shut the provider down."""
        self.provider.shutdown()


def _sdk_disabled(environ: Mapping[str, str]) -> bool:
    return environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def open_tracing(
    enabled: bool,
    exporter: str | None = None,
    *,
    identifier: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Tracing:
    """The tracing the configuration asks for: :data:`NO_TRACING` unless ``enabled`` (and
    not ``OTEL_SDK_DISABLED=true``), else an :class:`OtelTracing` exporting to ``exporter``.

    ``exporter`` (``none``, ``console``, ``otlp``; a comma-separated list) defaults to
    ``OTEL_TRACES_EXPORTER``, else ``none``: spans are then made and their context passed
    on, but sent nowhere. The resource reads ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` (service name ``calsched`` otherwise); the OTLP exporter
    reads its own ``OTEL_EXPORTER_OTLP_*`` settings (both from ``os.environ``: ``environ``
    is where the two switches are read). ``identifier`` is the ``service.instance.id``.
    Raises :class:`ConfigError` when the extra or the OTLP exporter is not installed, or
    for an unknown exporter.
    """
    if not enabled or _sdk_disabled(environ):
        return NO_TRACING
    names = [
        n.strip().lower()
        for n in (exporter or environ.get("OTEL_TRACES_EXPORTER") or "none").split(",")
    ]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise ConfigError(f"tracing exporter {unknown[0]!r} is not one of: {', '.join(EXPORTERS)}")
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise ConfigError(
            "tracing = true needs the otel extra: pip install 'calsched[otel]'"
        ) from None
    resource = Resource.create()
    service = str(resource.attributes.get("service.name", ""))
    extra: dict[str, str] = {}
    if service.startswith("unknown_service"):
        extra["service.name"] = "calsched"
    if identifier is not None:
        extra["service.instance.id"] = identifier
    provider = TracerProvider(resource=resource.merge(Resource(extra)))
    for name in dict.fromkeys(names):
        if name == "console":
            # Batched: a span's end never waits for a write on the event loop.
            # stdout as it is now (its default is the one at import: a redirect is missed).
            console = ConsoleSpanExporter(out=sys.stdout)
            provider.add_span_processor(BatchSpanProcessor(console))
        elif name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    return OtelTracing(provider)


def _otlp_exporter() -> SpanExporter:
    # Not a dependency of the extra (it brings protobuf): installed by whoever exports OTLP.
    try:
        module = importlib.import_module(_OTLP_MODULE)
    except ImportError:
        raise ConfigError(
            "tracing exporter 'otlp' needs opentelemetry-exporter-otlp-proto-http: "
            "pip install opentelemetry-exporter-otlp-proto-http"
        ) from None
    exporter: SpanExporter = module.OTLPSpanExporter()
    return exporter
