"""The control API as one Starlette app: its limits, its routes, its middleware."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from calsched.control.admin_routes import AdminRoutes
from calsched.control.agent_routes import AgentRoutes
from calsched.control.answers import endpoint, http_error
from calsched.control.auth import Auth
from calsched.control.body import BodyReader
from calsched.control.middleware import HostCheck, TraceContext
from calsched.control.probes import Probes
from calsched.errors import ConfigError
from calsched.metrics import Metrics
from calsched.ports import OutboxTools, SlotTools
from calsched.status import Readiness
from calsched.tokens import MIN_SECRET_BYTES
from calsched.tracing import NO_TRACING, Tracing

#: The names a loopback client puts in ``Host``.
DEFAULT_ALLOWED_HOSTS = ("127.0.0.1", "localhost", "[::1]")
#: Largest request body, in bytes.
MAX_BODY = 64 * 1024
#: Largest ``summary`` or ``reason``, in UTF-8 bytes.
MAX_FIELD = 8 * 1024


def create_control_app(
    tools: SlotTools,
    *,
    secret: bytes,
    metrics: Metrics | None = None,
    allowed_hosts: Sequence[str] = DEFAULT_ALLOWED_HOSTS,
    max_body: int = MAX_BODY,
    max_field: int = MAX_FIELD,
    tracing: Tracing = NO_TRACING,
    outbox: OutboxTools | None = None,
    readiness: Callable[[], Awaitable[Readiness]] | None = None,
) -> Starlette:
    """The control API (protocol section 2) serving ``tools``, as an ASGI app.

    ``secret`` is the daemon secret tokens are derived from (:mod:`calsched.tokens`);
    ``metrics``, if given, is served at ``/metrics``, and ``readiness`` (the scheduler's
    :meth:`~calsched.scheduler.Scheduler.readiness`) at ``/readyz``; ``allowed_hosts``
    are the names accepted in the ``Host`` header (an IPv6 address in brackets, as in
    ``[::1]``); ``tracing``, when on, makes each request a span continuing its
    ``traceparent``; ``outbox``, if given, serves the operator's outbox actions
    (``/v1/outbox/...``).
    Raises :class:`~calsched.errors.ConfigError` for an unusable setting.
    """
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"the control secret must be at least {MIN_SECRET_BYTES} bytes long")
    if isinstance(allowed_hosts, str) or not allowed_hosts:
        raise ConfigError("allowed_hosts must be a non-empty list of host names")
    if max_body < 1 or max_field < 1:
        raise ConfigError("max_body and max_field must be positive")
    auth = Auth(secret)
    bodies = BodyReader(max_body, max_field)
    probes = Probes(readiness)
    admin = AdminRoutes(tools, auth, bodies, metrics, outbox)
    agents = AgentRoutes(tools, auth, bodies)
    # :path so an agent id holding "/" (sent as %2F, decoded before routing) still routes.
    agent = "/v1/agents/{agent_id:path}/slot"
    routes = [
        Route("/healthz", endpoint(probes.healthz), methods=["GET"]),
        Route("/readyz", endpoint(probes.readyz), methods=["GET"]),
        Route("/v1/status", endpoint(admin.status), methods=["GET"]),
        Route("/metrics", endpoint(admin.metrics_text), methods=["GET"]),
        Route("/v1/agents/{agent_id:path}/status", endpoint(agents.agent_status), methods=["GET"]),
        Route(agent, endpoint(agents.slot), methods=["GET"]),
        Route(f"{agent}/complete", endpoint(agents.complete), methods=["POST"]),
        Route(f"{agent}/abort", endpoint(agents.abort), methods=["POST"]),
        Route(f"{agent}/pause", endpoint(agents.pause), methods=["POST"]),
        Route(f"{agent}/resume", endpoint(agents.resume), methods=["POST"]),
        Route("/v1/outbox/dead/retry", endpoint(admin.outbox_retry), methods=["POST"]),
        Route("/v1/outbox/{row_id:int}/retry", endpoint(admin.outbox_retry), methods=["POST"]),
        Route("/v1/outbox/{row_id:int}/discard", endpoint(admin.outbox_discard), methods=["POST"]),
    ]
    allowed = frozenset(host.strip().lower() for host in allowed_hosts)
    middleware = [Middleware(HostCheck, allowed=allowed)]
    if tracing.enabled:  # off, not even a pass-through layer
        middleware.append(Middleware(TraceContext, tracing=tracing))
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: http_error},
    )
