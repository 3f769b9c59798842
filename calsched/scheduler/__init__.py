"""The scheduler: heartbeat, dispatch, the agents' tools, outbox delivery, recovery.

:class:`Scheduler` (:mod:`calsched.scheduler.scheduler`) is the seed's scheduler made
durable. It reaches the journal only through its :class:`JournalGateway`
(:mod:`calsched.scheduler.gateway`), and the backend hears every change through the
:class:`OutboxWorker` (:mod:`calsched.scheduler.outbox`).
"""

from __future__ import annotations

from calsched.scheduler.scheduler import FAILPOINTS, Scheduler

__all__ = ["FAILPOINTS", "Scheduler"]
