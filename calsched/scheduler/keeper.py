"""The lease keeper: renews the daemon's lease on a timer, and fails closed.

:class:`LeaseKeeper` renews every ``every_s`` seconds (a fraction of the lease time) on a
thread, so the event loop never waits on the database. The lease is *lost* (its
:class:`~calsched.journal.lease.Fence` marked, which refuses every later journal write
and tells whoever listens) when:

- a renewal finds the row no longer carries this process's epoch and instance (another
  process took over: this one was silent past its expiry);
- no renewal has succeeded for a whole lease time (the database unreachable, or this
  process stopped or starved): by then another process may have taken over, so this one
  stops acting before it could know.

It never takes the lease back: stepping down is the daemon's job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from calsched.errors import JournalError, LeaseLostError
from calsched.journal.lease import Fence, Holder, Lease
from calsched.metrics import Metrics
from calsched.status import LeaseStatus

__all__ = ["LeaseKeeper"]

log = logging.getLogger("calsched.lease")


class LeaseKeeper:
    """Keeps one acquired :class:`Lease` renewed until it is lost or the task cancelled."""

    def __init__(
        self,
        lease: Lease,
        *,
        every_s: float,
        metrics: Metrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if lease.fence is None or lease.epoch is None or lease.held is None:
            raise ValueError("the lease keeper needs an acquired lease")
        self.lease = lease
        self.fence: Fence = lease.fence
        self.every_s = every_s
        self.ttl_s = lease.ttl.total_seconds()
        self.metrics = metrics or Metrics()
        self._monotonic = monotonic
        #: When the last successful renewal (or the acquisition) started.
        self.last_ok = monotonic()
        #: The lease row as last written by this process (acquisition or renewal).
        self.holder: Holder = lease.held
        fence = self.fence
        self.metrics.lease_held.set_function(lambda: 0.0 if fence.lost else 1.0)
        self.metrics.lease_epoch.set(lease.epoch)
        self.metrics.lease_refused_writes.set_function(lambda: float(fence.refused))

    async def run(self) -> None:
        """Renew until the lease is lost (then return) or the task is cancelled."""
        while self.fence.lost is None:
            await asyncio.sleep(self.every_s)
            await self.renew_once()

    async def renew_once(self) -> None:
        """One renewal, bounded by what is left of the lease; loses it when due."""
        if self.fence.lost is not None:
            return
        started = self._monotonic()
        left = self.ttl_s - (started - self.last_ok)
        if left <= 0:
            # Overslept (stopped, starved) or failing for a whole lease time.
            self._lose(f"not renewed within the lease time ({self.ttl_s:g} s)")
            return
        try:
            async with asyncio.timeout(left):
                held = await asyncio.to_thread(self.lease.renew)
        except LeaseLostError as exc:
            self._lose(exc.why)
        except (JournalError, TimeoutError) as exc:
            self.metrics.lease_renewals.labels("failed").inc()
            log.warning("lease renewal failed (%s); %.1f s of the lease left", exc, left)
            if self._monotonic() - self.last_ok >= self.ttl_s:
                self._lose(f"not renewed within the lease time ({self.ttl_s:g} s)")
        else:
            self.last_ok = started
            self.holder = held
            self.metrics.lease_renewals.labels("ok").inc()

    def status(self) -> LeaseStatus:
        """The lease as the status page shows it."""
        held = self.holder
        return LeaseStatus(
            state="held" if self.fence.lost is None else "lost",
            lost=self.fence.lost,
            epoch=held.epoch,
            host=held.host,
            pid=held.pid,
            since=held.acquired_at,
            renewed_at=held.renewed_at,
            expires_at=held.expires_at,
            locked=held.locked,
            renewals=self.lease.renewals,
            refused_writes=self.fence.refused,
        )

    def _lose(self, why: str) -> None:
        self.metrics.lease_renewals.labels("failed").inc()
        self.fence.lose(why)
