"""Prometheus metrics of one scheduler, in a registry of its own (no global state).

The control API serves :meth:`Metrics.render` at ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "Metrics"]

#: The Content-Type of :meth:`Metrics.render`.
CONTENT_TYPE = CONTENT_TYPE_LATEST


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
        self.active_slots = Gauge(
            "calsched_active_slots", "Slots not yet completed or aborted.", registry=r
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

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
