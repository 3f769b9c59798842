"""The scheduler: a thin facade over its pieces, with the agents' tools and start/stop.

It is the seed's ``Scheduler`` made durable. Every decision becomes a
:class:`~calsched.journal.TransitionRequest`; the :class:`JournalGateway` is the one way
to the journal (group commit on a writer thread, so the event loop never blocks on a
commit), and effects (wakes, backend calls) only happen after the commit returned. The
:class:`Heartbeat` takes slots in, the :class:`Dispatcher` wakes agents, the
:class:`OutboxWorker` tells the backend; :class:`Recovery` reloads the live slots at start,
the :class:`Runner` starts and stops the loops, the :class:`StatusBoard` builds the status.

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

from collections import Counter
from collections.abc import Callable
from datetime import datetime
from functools import partial

from calsched.errors import ConfigError
from calsched.journal import Journal
from calsched.journal.dead_letters import DeadLetters
from calsched.journal.idempotency import IdempotencyStore, Remembered, ToolKey
from calsched.journal.store import Applied, notifies_backend
from calsched.metrics import Metrics
from calsched.model import Actor, SlotView, Trigger, utcnow
from calsched.ports import Backend, Host
from calsched.scheduler.dead_letter_desk import DeadLetterDesk
from calsched.scheduler.dispatcher import Dispatcher
from calsched.scheduler.gateway import JournalGateway
from calsched.scheduler.heartbeat import Heartbeat
from calsched.scheduler.live import LiveView
from calsched.scheduler.outbox import OutboxWorker
from calsched.scheduler.readiness import ReadinessProbe
from calsched.scheduler.recovery import Recovery
from calsched.scheduler.runner import Runner
from calsched.scheduler.status_board import StatusBoard
from calsched.scheduler.tools import ToolDesk
from calsched.settings import SchedulerSettings
from calsched.status import LeaseStatus, Readiness, SchedulerStatus
from calsched.tracing import NO_TRACING, Tracing

__all__ = ["FAILPOINTS", "Scheduler"]

Clock = Callable[[], datetime]

#: The named seams where a crash harness may stop the process (``failpoint=`` hook).
FAILPOINTS = ("after_commit", "after_wake", "after_outbox_send", "during_recovery")


def _no_failpoint(name: str) -> None:
    """The default hook: seams cost one call and do nothing."""


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
        self.journal = journal
        self.backend = backend
        self.host = host
        self.metrics = metrics or Metrics()
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
        self._board = StatusBoard(settings, self._heartbeat, self._live, self._outbox, lease_status)
        self._recovery = Recovery(
            settings,
            journal,
            self._gateway,
            self._live,
            self._board,
            self._dispatch,
            self._outbox,
            failpoint=failpoint,
        )
        self._runner = Runner(
            settings, self._gateway, self._heartbeat, self._dispatch, self._outbox
        )

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
        self._board.record(self._live.absorb(applied))
        if outbox:
            self._outbox.kick()

    # -- lifecycle of the scheduler itself -----------------------------------------------

    async def start(self) -> None:
        """Recover from the journal, then start the heartbeat loop and the outbox worker."""
        await self._runner.start(self.recover)

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
            await self._runner.stopped.wait()
        finally:
            if not self._runner.stopped.is_set():
                await self.stop()

    async def stop(self, *, flush: bool = True) -> None:
        """Stop gracefully: no more beats, bounded wait for wakes, flush the outbox.

        Nothing committed is lost: a wake abandoned here leaves its slot ``dispatching``,
        which the next start re-dispatches; an undelivered outbox row stays in the outbox.
        Without ``flush`` (stepping down after losing the lease) nothing more is sent to
        the backend: the new holder delivers the outbox.
        """
        await self._runner.stop(flush=flush)

    async def idle(self) -> None:
        """Wait until no wake is in flight and the outbox has nothing due right now.

        For tests and embedding hosts that drive :meth:`heartbeat_once` themselves.
        """
        await self._runner.idle()

    # -- recovery ------------------------------------------------------------------------

    async def recover(self) -> None:
        """Reload non-terminal slots; re-dispatch ``pending``/``dispatching`` ones.

        ``in_progress`` and ``paused`` slots are restored silently; undelivered outbox rows
        are picked up by the outbox worker. Only live slots are read, never the history.
        """
        await self._recovery.recover()

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
        return self._board.status()

    async def readiness(self) -> Readiness:
        """The readiness checks (``GET /readyz``): the journal, the lease, the backend."""
        return await self._readiness.check()

    def _key_refused(self, refused: bool) -> None:
        self._heartbeat.key_refused(refused)
