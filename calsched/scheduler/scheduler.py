"""The scheduler: a thin facade over its pieces, with the agents' tools and start/stop.

It is the seed's ``Scheduler`` made durable. Every decision becomes a
:class:`~calsched.journal.TransitionRequest`; the :class:`JournalGateway` is the one way
to the journal (group commit on a writer thread, so the event loop never blocks on a
commit), and effects (wakes, backend calls) only happen after the commit returned. The
:class:`Heartbeat` takes slots in, the :class:`Dispatcher` wakes agents, the
:class:`OutboxWorker` tells the backend.

The live view (:class:`LiveView`, indexed by agent) holds the non-terminal slots. It
changes only in :meth:`Scheduler._absorb`, which the gateway calls with every committed
:class:`~calsched.journal.store.Applied` from a done-callback of the commit, so it equals
the replay of the journal even when the task that asked for the commit was cancelled.

Named seams for the crash harness (DESIGN.md "What comes after the core"): the
``failpoint`` hook given to the constructor is called with ``after_commit``,
``after_wake``, ``after_outbox_send`` and ``during_recovery``; a harness may kill the
process there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import partial
from typing import Any

from calsched.errors import ConfigError
from calsched.journal import Journal
from calsched.journal.dead_letters import DeadLetters
from calsched.journal.idempotency import IdempotencyStore, Remembered, ToolKey
from calsched.journal.store import Applied, notifies_backend
from calsched.metrics import Metrics
from calsched.model import Actor, SlotState, SlotView, Trigger, utcnow
from calsched.ports import Backend, Host
from calsched.scheduler.dead_letter_desk import DeadLetterDesk
from calsched.scheduler.dispatcher import Dispatcher
from calsched.scheduler.gateway import JournalGateway
from calsched.scheduler.heartbeat import Heartbeat
from calsched.scheduler.live import LiveView
from calsched.scheduler.outbox import OutboxWorker
from calsched.scheduler.readiness import ReadinessProbe
from calsched.scheduler.tools import ToolDesk
from calsched.settings import SchedulerSettings
from calsched.status import (
    HistoryEntry,
    LeaseStatus,
    OutboxSummary,
    Readiness,
    SchedulerStatus,
    SlotEntry,
)
from calsched.tracing import NO_TRACING, Tracing

__all__ = ["FAILPOINTS", "Scheduler"]

log = logging.getLogger("calsched.scheduler")
Clock = Callable[[], datetime]

#: The named seams where a crash harness may stop the process (``failpoint=`` hook).
FAILPOINTS = ("after_commit", "after_wake", "after_outbox_send", "during_recovery")


def _no_failpoint(name: str) -> None:
    """The default hook: seams cost one call and do nothing."""


async def _drain(tasks: Iterable[asyncio.Task[Any]], deadline: float) -> None:
    """Wait for ``tasks`` until ``deadline`` (loop time), then cancel the late ones."""
    pending = {t for t in tasks if not t.done()}
    if not pending:
        return
    timeout = max(0.0, deadline - asyncio.get_running_loop().time())
    _, late = await asyncio.wait(pending, timeout=timeout)
    for task in late:
        task.cancel()
    if late:
        await asyncio.gather(*late, return_exceptions=True)


class Scheduler:
    """Heartbeats the backend, wakes agents for slots, and serves the agents' tools.

    Build it with settings, an open :class:`Journal`, a backend and a host, then
    ``await start()`` (or ``await run()``) inside an event loop, and ``await stop()``;
    ``tracing`` (:mod:`calsched.tracing`) is off unless given;
    or let ``async with`` do both (stopped on exit, an exception's included)::

        async with Scheduler(settings, journal, backend, host) as scheduler: ...
    """

    def __init__(
        self,
        settings: SchedulerSettings,
        journal: Journal,
        backend: Backend,
        host: Host,
        *,
        metrics: Metrics | None = None,
        clock: Clock = utcnow,
        failpoint: Callable[[str], None] = _no_failpoint,
        lease_status: Callable[[], LeaseStatus] | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        if settings.identifier != journal.identifier:
            raise ConfigError(
                f"the scheduler's identifier {settings.identifier!r} differs from the "
                f"journal's {journal.identifier!r}"
            )
        self.settings = settings
        #: The lease this scheduler runs under, for status (the daemon's LeaseKeeper).
        self._lease_status = lease_status
        self._failpoint = failpoint
        self.journal = journal
        self.backend = backend
        self.host = host
        self.metrics = metrics or Metrics()
        self._clock = clock
        self._live = LiveView()
        self.metrics.count_active(self._live.by_state)
        self._gateway = JournalGateway(
            journal, on_applied=self._absorb, after_commit=partial(failpoint, "after_commit")
        )
        self._dispatch = Dispatcher(
            settings,
            self._gateway,
            self._live,
            host,
            metrics=self.metrics,
            clock=clock,
            failpoint=failpoint,
            tracing=tracing,
        )
        self._outbox = OutboxWorker(
            settings,
            self._gateway,
            backend,
            metrics=self.metrics,
            clock=clock,
            report_key=self._key_refused,
            reconciled=self._dispatch.pump,
            failpoint=failpoint,
            tracing=tracing,
        )
        self._heartbeat = Heartbeat(
            settings,
            self._gateway,
            self._live,
            self._dispatch,
            backend,
            host,
            metrics=self.metrics,
            clock=clock,
            tracing=tracing,
        )
        self._readiness = ReadinessProbe(
            settings, self._gateway, self._heartbeat, clock=clock, lease_status=lease_status
        )
        keys = IdempotencyStore(journal.engine, journal.identifier, clock=clock)
        self._tools = ToolDesk(self._gateway, self._live, self._dispatch, keys, tracing=tracing)
        #: The operator's outbox actions (retry, discard), for the control API.
        self.dead_letters = DeadLetterDesk(
            self._gateway,
            self._outbox,
            DeadLetters(journal.engine, journal.identifier, clock=clock),
        )
        #: Set when a heartbeat answers ``restart_pending: true``.
        self.restart_requested = self._heartbeat.restart_requested
        # maxlen=0 keeps nothing: a cap of 0 turns the in-memory history off.
        self._history: deque[HistoryEntry] = deque(maxlen=settings.history_cap)
        self._loops: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._started = False

    # -- the live view ------------------------------------------------------------------

    def _absorb(self, applied: Applied) -> None:
        """Take committed views into the live view, history and metrics (active slots are
        counted from the live view when scraped)."""
        outbox = False
        kinds: Counter[str] = Counter()
        for event in applied.events:
            kinds[event.kind.value] += 1
            if notifies_backend(event.kind, event.state_to):
                outbox = True
        for kind, count in kinds.items():  # one labels() lookup per kind, not per event
            self.metrics.transitions.labels(kind).inc(count)
        self._history.extend(HistoryEntry.from_view(v) for v in self._live.absorb(applied))
        if outbox:
            self._outbox.kick()

    # -- lifecycle of the scheduler itself -----------------------------------------------

    async def start(self) -> None:
        """Recover from the journal, then start the heartbeat loop and the outbox worker."""
        if self._started:
            return
        self._started = True
        await self.recover()
        self._loops = [
            asyncio.create_task(self._heartbeat.run(), name="calsched-heartbeat"),
            asyncio.create_task(self._outbox.run(), name="calsched-outbox"),
        ]

    async def __aenter__(self) -> Scheduler:
        """``async with Scheduler(...) as s``: started on entry."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stopped on exit, an exception's included (nothing committed is lost)."""
        await self.stop()

    async def run(self) -> None:
        """Start, then wait until :meth:`stop` is called (or the task is cancelled)."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            if not self._stopped.is_set():
                await self.stop()

    async def stop(self, *, flush: bool = True) -> None:
        """Stop gracefully: no more beats, bounded wait for wakes, flush the outbox.

        Nothing committed is lost: a wake abandoned here leaves its slot ``dispatching``,
        which the next start re-dispatches; an undelivered outbox row stays in the outbox.
        Without ``flush`` (stepping down after losing the lease) nothing more is sent to
        the backend: the new holder delivers the outbox.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._dispatch.stopped = True
        deadline = asyncio.get_running_loop().time() + self.settings.shutdown_grace_s
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        await _drain(self._dispatch.wakes, deadline)
        if flush:
            with contextlib.suppress(Exception):
                await self._outbox.flush(deadline)
        await _drain(self._outbox.deliveries, deadline)
        await self._gateway.close()

    async def idle(self) -> None:
        """Wait until no wake is in flight and the outbox has nothing due right now.

        For tests and embedding hosts that drive :meth:`heartbeat_once` themselves.
        """
        # asyncio.wait, not gather: cancelling idle() must not cancel the wakes themselves.
        while True:
            if self._dispatch.wakes:
                await asyncio.wait(self._dispatch.wakes)
                continue
            started = await self._outbox.pass_once()
            if self._outbox.deliveries:
                await asyncio.wait(self._outbox.deliveries)
                continue
            if started:
                continue  # they finished already: their slots' next rows may be due
            if not self._dispatch.wakes:
                await self._outbox.refresh_counts()
                return

    # -- recovery ------------------------------------------------------------------------

    async def recover(self) -> None:
        """Reload non-terminal slots; re-dispatch ``pending``/``dispatching`` ones.

        ``in_progress`` and ``paused`` slots are restored silently; undelivered outbox rows
        are picked up by the outbox worker. Only live slots are read, never the history.
        """
        views = await self._gateway.read(self.journal.load_active)
        cap = self.settings.history_cap
        recent = await self._gateway.read(self.journal.history, limit=cap) if cap else []
        self._live.load(views)
        self._history.clear()
        self._history.extend(HistoryEntry.from_view(v) for v in reversed(recent) if v.terminal)
        self._failpoint("during_recovery")
        states = Counter(v.state for v in views)
        for view in views:
            if view.state is SlotState.dispatching:
                self._dispatch.spawn_wake(view, recovering=True)
        pending = sorted({v.agent_id for v in views if v.state is SlotState.pending})
        await self._dispatch.pump_many(pending, actor=Actor.recovery)
        await self._outbox.refresh_counts()
        self._outbox.kick()
        # After the re-dispatch committed: what the journal held, and what became of it.
        log.info(
            "recovered live slots",
            extra={
                "live": len(views),
                "redispatched": states[SlotState.dispatching],
                "pending": states[SlotState.pending],
                "agents_pumped": len(pending),
                "in_progress": states[SlotState.in_progress],
                "paused": states[SlotState.paused],
                "outbox_pending": self._outbox.counts.pending,
                "outbox_dead": self._outbox.counts.dead,
            },
        )

    async def heartbeat_once(self) -> bool:
        """Send one heartbeat and take in its slots; whether the backend answered.

        For tests and embedding hosts that drive beats themselves (with :meth:`idle`).
        """
        return await self._heartbeat.once()

    def nudge(self) -> None:
        """Beat now rather than at the end of the interval (if the backend is answering).

        For a caller that knows a slot is due at the backend: the daemon, watching the
        embedded calendar.
        """
        self._heartbeat.nudge()

    # -- the agents' tools (ports.SlotTools) ---------------------------------------------

    async def current_slot(self, agent_id: str) -> SlotView:
        """The agent's current slot; :class:`NoActiveSlotError` if it has none.

        Example: ``(await scheduler.current_slot("bob")).state is SlotState.in_progress``
        """
        return self._tools.current(agent_id)

    async def complete(
        self,
        agent_id: str,
        summary: str | None = None,
        *,
        slot_id: str | None = None,
        key: ToolKey | None = None,
        actor: Actor = Actor.agent,
    ) -> SlotView:
        """Complete the agent's current slot (the one ``slot_id`` names, if given).

        Example: ``await scheduler.complete("bob", "report sent", slot_id="s-18")``
        """
        return await self._tools.act(
            agent_id, Trigger.complete, slot_id, key, actor, summary=summary
        )

    async def abort(
        self,
        agent_id: str,
        reason: str | None = None,
        *,
        slot_id: str | None = None,
        key: ToolKey | None = None,
        actor: Actor = Actor.agent,
    ) -> SlotView:
        """Abort the agent's current slot."""
        return await self._tools.act(agent_id, Trigger.abort, slot_id, key, actor, reason=reason)

    async def pause(
        self,
        agent_id: str,
        reason: str | None = None,
        *,
        slot_id: str | None = None,
        key: ToolKey | None = None,
        actor: Actor = Actor.agent,
    ) -> SlotView:
        """Pause the agent's current slot."""
        return await self._tools.act(agent_id, Trigger.pause, slot_id, key, actor, reason=reason)

    async def resume(
        self,
        agent_id: str,
        *,
        slot_id: str | None = None,
        key: ToolKey | None = None,
        actor: Actor = Actor.agent,
    ) -> SlotView:
        """Resume the agent's paused slot."""
        return await self._tools.act(agent_id, Trigger.resume, slot_id, key, actor)

    async def recall(self, agent_id: str, key: str) -> Remembered | None:
        """The answer a tool call of ``agent_id`` under ``key`` got, if one is kept."""
        return await self._tools.recall(agent_id, key)

    # -- status --------------------------------------------------------------------------

    @property
    def restart_pending(self) -> bool:
        """What the last successful heartbeat said of ``restart_pending``."""
        return self._heartbeat.restart_pending

    def active(self) -> list[SlotView]:
        """The live view: every non-terminal slot, oldest first."""
        return self._live.sorted()

    def status(self) -> SchedulerStatus:
        """The scheduler status in the protocol's shape (section 2)."""
        counts = self._outbox.counts
        return SchedulerStatus(
            identifier=self.settings.identifier,
            last_heartbeat=self._heartbeat.last_sent,
            heartbeat_every_s=self.settings.heartbeat_interval_s,
            backend=self._heartbeat.health,
            active=[SlotEntry.from_view(v) for v in self._live.sorted()],
            history=list(self._history)[::-1],
            outbox=OutboxSummary(
                pending=counts.pending, dead=counts.dead, dead_slots=list(counts.dead_slots)
            ),
            restart_pending=self._heartbeat.restart_pending,
            lease=self._lease_status() if self._lease_status is not None else None,
        )

    async def readiness(self) -> Readiness:
        """The readiness checks (``GET /readyz``): the journal, the lease, the backend."""
        return await self._readiness.check()

    def _key_refused(self, refused: bool) -> None:
        self._heartbeat.key_refused(refused)
