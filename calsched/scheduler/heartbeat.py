"""The heartbeat: tells the backend what is live, takes in the slots it lists.

Each beat sends the identifier, the host's agents and the live slots; the slots the
backend lists are planned by the pure intake planner (:mod:`calsched.scheduler.intake`),
journaled in one commit, and handed to the :class:`Dispatcher`.

A failed beat is a failed try, whatever failed: the backend (refused, unavailable, no
answer within ``backend_deadline_s``) or anything else (the journal, a bug). The next
try then waits longer, doubling from the interval with jitter up to
:func:`heartbeat_cap`, with one log line per failure; a good beat goes back to the
interval. So the loop never spins and never dies.

Between good beats the loop can be nudged (:meth:`Heartbeat.nudge`) to beat at once: the
daemon does so when the embedded calendar has a slot due, so a slot added for now fires
within about a second instead of at the next interval. A failing backend is not nudged:
its backoff stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from calsched.errors import BackendError, BackendRefusedError
from calsched.journal import Journal
from calsched.metrics import Metrics
from calsched.model import (
    ActiveSlotReport,
    AgentReport,
    HeartbeatRequest,
    PluginInfo,
    Slot,
    SlotState,
)
from calsched.ports import Backend, Host
from calsched.scheduler.backoff import equal_jitter, exponential
from calsched.scheduler.dispatcher import Dispatcher
from calsched.scheduler.gateway import JournalGateway
from calsched.scheduler.intake import Known, fresh_slots, plan_intake
from calsched.scheduler.live import LiveView
from calsched.scheduler.outbox import no_answer
from calsched.settings import SchedulerSettings
from calsched.status import BackendHealth
from calsched.tracing import NO_TRACING, Tracing

__all__ = ["Heartbeat", "heartbeat_cap"]

log = logging.getLogger("calsched.scheduler")


def heartbeat_cap(settings: SchedulerSettings) -> float:
    """The longest wait between two tries of a failing heartbeat.

    The larger of the interval and ``outbox_backoff_max_s``: a backend that is down is
    asked no more often than the outbox asks it, and never more often than the interval.
    """
    return max(settings.heartbeat_interval_s, settings.outbox_backoff_max_s)


class Heartbeat:
    """One scheduler's heartbeat loop, and what it last heard from the backend."""

    def __init__(
        self,
        settings: SchedulerSettings,
        gateway: JournalGateway,
        live: LiveView,
        dispatcher: Dispatcher,
        backend: Backend,
        host: Host,
        *,
        metrics: Metrics,
        clock: Callable[[], datetime],
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.settings = settings
        self._tracing = tracing
        self._gateway = gateway
        self.journal: Journal = gateway.journal
        self._live = live
        self._dispatch = dispatcher
        self.backend = backend
        self.host = host
        self.metrics = metrics
        self._clock = clock
        #: When the last beat was sent, and what the backend's answers said.
        self.last_sent: datetime | None = None
        self.health = BackendHealth()
        #: What the last good beat said of ``restart_pending``.
        self.restart_pending = False
        #: Set when a heartbeat answers ``restart_pending: true``.
        self.restart_requested = asyncio.Event()
        #: Failed tries since the last good beat.
        self.failures = 0
        #: Set by :meth:`nudge`: beat now rather than at the end of the wait.
        self._nudged = asyncio.Event()
        #: How the loop waits between beats (a seam: tests record the waits).
        self.sleep: Callable[[float], Awaitable[None]] = self._rest

    def nudge(self) -> None:
        """Something is due at the backend now: end the current wait between good beats."""
        self._nudged.set()

    async def _rest(self, seconds: float) -> None:
        """Wait ``seconds``, or less if nudged while the backend answers."""
        if self.failures:  # backing off: a nudge must not make a failing backend asked more
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._nudged.wait()

    def key_refused(self, refused: bool) -> None:
        """The outbox heard whether the backend refuses the key: keep status current."""
        self.health = self.health.model_copy(update={"key_refused": refused})

    async def run(self) -> None:
        """Beat every interval; after a failed try, back off (see the module's doc)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            # A nudge before this beat is answered by it; only a later one shortens the wait.
            self._nudged.clear()
            try:
                ok = await self.once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure is a failed try; the loop goes on
                ok = False
                self._failed(f"{type(exc).__name__}: {exc}", unexpected=True)
            if ok:
                wait = self.settings.heartbeat_interval_s - (loop.time() - started)
            else:
                wait = self.retry_wait()
                log.warning(
                    "heartbeat failed (try %d): %s; next try in %.1fs",
                    self.failures,
                    self.health.last_error,
                    wait,
                )
            await self.sleep(max(0.0, wait))

    def retry_wait(self) -> float:
        """Seconds until the next try after ``failures`` failed ones in a row."""
        interval = self.settings.heartbeat_interval_s
        base = exponential(self.failures - 1, interval, heartbeat_cap(self.settings))
        # Never sooner than the interval: a failing backend is not asked more often.
        return max(interval, equal_jitter(base))

    async def once(self) -> bool:
        """Send one heartbeat and take in the slots it lists; whether the backend answered.

        A backend failure is recorded (status, metrics) and returns ``False``; anything
        else that fails (the journal, a bug) raises, for the loop to count as a failed try.
        The beat is one span: the wakes it starts are its children.
        """
        attributes = {
            "calsched.identifier": self.settings.identifier,
            "calsched.actor": "scheduler",
        }
        with self._tracing.span("calsched.heartbeat", attributes, kind="client") as span:
            ok = await self._beat()
            if not ok:
                span.fail(self.health.last_error or "heartbeat failed")
            return ok

    async def _beat(self) -> bool:
        sent_at = self._clock()
        request = HeartbeatRequest(
            identifier=self.settings.identifier,
            plugin_info=PluginInfo(),
            captured_at=sent_at,
            agents=await self._list_agents(),
            active_slots=[
                ActiveSlotReport(
                    id=v.slot_id, agent_id=v.agent_id, state=v.state, attempt=v.attempt
                )
                for v in self._live.sorted()
            ],
        )
        self.last_sent = sent_at
        try:
            async with asyncio.timeout(self.settings.backend_deadline_s):
                response, rejected = await self.backend.heartbeat(request)
        except (BackendError, TimeoutError) as caught:
            exc = (
                no_answer(self.settings.backend_deadline_s)
                if isinstance(caught, TimeoutError)
                else caught
            )
            self._failed(str(exc), key_refused=isinstance(exc, BackendRefusedError))
            return False
        self.metrics.heartbeats.labels("ok").inc()
        self.failures = 0
        answered = self._clock()
        self.health = BackendHealth(last_ok=answered)
        self.metrics.heartbeat_last_success.set(answered.timestamp())
        self.restart_pending = response.restart_pending
        if response.restart_pending:
            self.restart_requested.set()
        for bad in rejected:
            log.warning("skipped an invalid slot from the backend: %s", bad.error)
        if response.slots_to_fire:
            await self._intake(response.slots_to_fire, sent_at)
        await self._pump_stranded()
        return True

    async def _pump_stranded(self) -> None:
        """Dispatch pending slots of idle agents that nobody is pumping any more.

        A dispatch that failed on the journal (a full disk, an I/O error) after its
        slot's receive committed leaves it pending; no later event pumps its agent, so
        each good beat does, and the slot goes out once the journal is back.
        """
        live = self._live
        stranded = {
            v.agent_id
            for v in live.sorted()
            if v.state is SlotState.pending and live.current(v.agent_id) is None
        }
        if stranded:
            await self._dispatch.pump_many(sorted(stranded))

    def _failed(self, error: str, *, key_refused: bool = False, unexpected: bool = False) -> None:
        self.failures += 1
        self.metrics.heartbeats.labels("failed").inc()
        # A refused key stays refused until the backend takes it again.
        refused = key_refused or self.health.key_refused
        self.health = self.health.model_copy(update={"last_error": error, "key_refused": refused})
        if unexpected:
            log.debug("heartbeat failed unexpectedly", exc_info=True)

    async def _list_agents(self) -> list[AgentReport]:
        try:
            async with asyncio.timeout(self.settings.wake_timeout_s):
                return await self.host.list_agents()
        except Exception as exc:  # a failed agent list must not fail the beat
            log.warning("listing agents failed: %s", type(exc).__name__)
            return []

    async def _intake(self, listed: Sequence[Slot], sent_at: datetime) -> None:
        """Journal the newly listed slots in one transaction, then dispatch."""
        fresh = fresh_slots(listed, self._live.__contains__)
        if not fresh:
            return
        views = await self._gateway.read(self.journal.get_many, [s.id for s in fresh])
        settled = await self._gateway.read(self.journal.settled_at, views.values())
        known = {
            slot_id: Known(ended=view.terminal, settled_at=settled.get(slot_id))
            for slot_id, view in views.items()
        }
        requests = plan_intake(
            fresh,
            known,
            self._live.of_agent,
            sent_at=sent_at,
            now=self._clock(),
            policy=self.settings.policy,
            misfire_grace_s=self.settings.misfire_grace_s,
        )
        if not requests:
            return
        # Received, and the new slots of idle agents dispatched, in one commit.
        await self._dispatch.intake(requests, sorted({s.agent_id for s in fresh}))
