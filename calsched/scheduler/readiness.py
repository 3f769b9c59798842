"""Readiness (``GET /readyz``): can this scheduler do its work right now?

Three checks, each named in the answer:

- ``journal``: the writer has no failure episode open (a full disk, an I/O error) and a
  cheap read (:meth:`~calsched.journal.Journal.ping`) answers within
  :data:`READ_TIMEOUT_S`;
- ``lease`` (only when the scheduler runs under one): held, not lost, not expired;
- ``backend``: a heartbeat succeeded within :data:`LATE_BEATS` intervals plus one backend
  deadline (a beat may take that long before it counts as failed).

Liveness is ``/healthz``; readiness says whether agents' calls and the backend's slots
are being handled. The details never carry an error text from the backend or the
database (they may name hosts or users): the log and ``calsched status`` have those.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from calsched.errors import JournalError, JournalUnavailableError
from calsched.scheduler.gateway import JournalGateway
from calsched.scheduler.heartbeat import Heartbeat
from calsched.settings import SchedulerSettings
from calsched.status import LeaseStatus, Readiness, ReadinessCheck

__all__ = ["LATE_BEATS", "READ_TIMEOUT_S", "ReadinessProbe"]

log = logging.getLogger("calsched.scheduler")

#: How long the journal read may take before the journal counts as not ready.
READ_TIMEOUT_S = 2.0
#: Heartbeat intervals (plus one backend deadline) without a good beat before the
#: backend counts as not ready.
LATE_BEATS = 3


class ReadinessProbe:
    """Runs the readiness checks of one scheduler."""

    def __init__(
        self,
        settings: SchedulerSettings,
        gateway: JournalGateway,
        heartbeat: Heartbeat,
        *,
        clock: Callable[[], datetime],
        lease_status: Callable[[], LeaseStatus] | None = None,
    ) -> None:
        self.settings = settings
        self._gateway = gateway
        self._heartbeat = heartbeat
        self._clock = clock
        self._lease_status = lease_status

    @property
    def backend_limit_s(self) -> float:
        """Seconds since the last good heartbeat after which the backend is not ready."""
        s = self.settings
        return LATE_BEATS * s.heartbeat_interval_s + s.backend_deadline_s

    async def check(self) -> Readiness:
        """Every check, in order: journal, lease (if any), backend."""
        checks = {"journal": await self._journal()}
        if self._lease_status is not None:
            checks["lease"] = self._lease(self._lease_status())
        checks["backend"] = self._backend()
        return Readiness.of(checks)

    async def _journal(self) -> ReadinessCheck:
        cause = self._gateway.writer.availability.cause
        if cause is not None:
            return ReadinessCheck(ok=False, detail=f"writes fail: {cause}")
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                await self._gateway.read(self._gateway.journal.ping)
        except TimeoutError:
            return ReadinessCheck(ok=False, detail=f"no answer to a read in {READ_TIMEOUT_S:g}s")
        except JournalUnavailableError as exc:
            return ReadinessCheck(ok=False, detail=f"reads fail: {exc.cause}")
        except JournalError as exc:
            log.debug("readiness: the journal read failed: %s", exc)
            return ReadinessCheck(ok=False, detail="reads fail (see the calsched log)")
        return ReadinessCheck(ok=True, detail="reads and writes succeed")

    def _lease(self, lease: LeaseStatus) -> ReadinessCheck:
        if lease.state != "held":
            return ReadinessCheck(ok=False, detail=f"lost: {lease.lost or 'unknown'}")
        if lease.expires_at <= self._clock():
            return ReadinessCheck(ok=False, detail="expired: not renewed in time")
        return ReadinessCheck(ok=True, detail=f"held, epoch {lease.epoch}")

    def _backend(self) -> ReadinessCheck:
        health = self._heartbeat.health
        limit = self.backend_limit_s
        if health.last_ok is None:
            why = "the backend refuses the API key" if health.key_refused else "none yet"
            return ReadinessCheck(ok=False, detail=f"no successful heartbeat: {why}")
        age = (self._clock() - health.last_ok).total_seconds()
        if age > limit:
            return ReadinessCheck(
                ok=False,
                detail=f"last successful heartbeat {age:.1f}s ago (limit {limit:g}s)",
            )
        return ReadinessCheck(ok=True, detail=f"last successful heartbeat {age:.1f}s ago")
