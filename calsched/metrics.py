"""Prometheus metrics of one scheduler, in a registry of its own (no global state).

The control API serves :meth:`Metrics.render` at ``/metrics``; docs/operations.md lists
every metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from calsched._version import __version__
from calsched.model import SlotState

__all__ = ["CONTENT_TYPE", "DELIVERY_OUTCOMES", "Metrics"]

#: The Content-Type of :meth:`Metrics.render`.
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: The outcomes of one outbox delivery try, as ``calsched_outbox_deliveries_total`` counts
#: them: the backend took it; it will be tried again (a passing fault, a refused key, an
#: unexpected error); it was given up on (the backend cannot take it); the backend held
#: another terminal status, which the journal took (a 409).
DELIVERY_OUTCOMES = ("delivered", "retried", "dead_lettered", "reconciled")

#: The states a live slot can be in, in lifecycle order: each has a series, 0 included.
_LIVE_STATES = tuple(s.value for s in SlotState if not s.terminal)


class _ActiveSlots(Collector):
    """``calsched_active_slots{state}``, counted when scraped: the live view is counted
    once per scrape, never on the commit path."""

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[str, int]] | None = None

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "calsched_active_slots",
            "Slots not yet completed or aborted, by state.",
            labels=["state"],
        )
        counts = self.source() if self.source is not None else {}
        for state in _LIVE_STATES:
            family.add_metric([state], counts.get(state, 0))
        yield family


class Metrics:
    """Counters and gauges the scheduler updates as it works."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.heartbeats = Counter(
            "calsched_heartbeats", "Heartbeats sent, by outcome.", ["outcome"], registry=r
        )
        self.wakes = Counter(
            "calsched_wakes", "Wake calls to the host, by outcome.", ["outcome"], registry=r
        )
        self.transitions = Counter(
            "calsched_transitions", "Journaled transitions, by trigger.", ["kind"], registry=r
        )
        self.outbox_pending = Gauge(
            "calsched_outbox_pending", "Status updates waiting for the backend.", registry=r
        )
        self.outbox_dead = Gauge(
            "calsched_outbox_dead", "Status updates dead-lettered.", registry=r
        )
        self.build = Info("calsched_build", "The calsched version running.", registry=r)
        self.build.info({"version": __version__})
        self._active = _ActiveSlots()
        r.register(self._active)
        self.outbox_deliveries = Counter(
            "calsched_outbox_deliveries",
            "Outbox delivery tries, by outcome.",
            ["outcome"],
            registry=r,
        )
        for outcome in DELIVERY_OUTCOMES:  # every outcome has a series from the start
            self.outbox_deliveries.labels(outcome)
        self.heartbeat_last_success = Gauge(
            "calsched_heartbeat_last_success_timestamp_seconds",
            "When the backend last answered a heartbeat, in Unix seconds (0: not yet).",
            registry=r,
        )
        self.dispatch_latency = Histogram(
            "calsched_dispatch_latency_seconds",
            "From receiving a slot to the host accepting its wake.",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

        self.lease_held = Gauge(
            "calsched_lease_held", "1 while this process holds its identifier's lease.", registry=r
        )
        self.lease_epoch = Gauge(
            "calsched_lease_epoch", "The epoch (fencing token) of the lease held.", registry=r
        )
        self.lease_renewals = Counter(
            "calsched_lease_renewals", "Lease renewals, by outcome.", ["outcome"], registry=r
        )
        self.lease_refused_writes = Gauge(
            "calsched_lease_refused_writes",
            "Journal write transactions refused because the lease was lost.",
            registry=r,
        )

    def count_active(self, source: Callable[[], Mapping[str, int]]) -> None:
        """Where ``calsched_active_slots`` comes from: live slots by state, read per scrape."""
        self._active.source = source

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
