"""The scheduler: heartbeat, intake, dispatch and wakes, the agents' tools, recovery.

It is the seed's ``Scheduler`` made durable. Every decision becomes a
:class:`~calsched.journal.TransitionRequest`; the :class:`JournalGateway` is the one way
to the journal (group commit on a writer thread, so the event loop never blocks on a
commit), and effects (wakes, backend calls) only happen after the commit returned. The
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
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from calsched.errors import (
    BackendError,
    BackendRefusedError,
    ConfigError,
    NoActiveSlotError,
    StaleSlotError,
)
from calsched.journal import Journal, TransitionRequest
from calsched.journal.store import Applied, notifies_backend
from calsched.metrics import Metrics
from calsched.model import (
    ActiveSlotReport,
    Actor,
    AgentReport,
    HeartbeatRequest,
    PluginInfo,
    Slot,
    SlotState,
    SlotView,
    Trigger,
    format_time,
    utcnow,
)
from calsched.ports import Backend, Host
from calsched.scheduler.dispatcher import Dispatcher
from calsched.scheduler.gateway import JournalGateway
from calsched.scheduler.intake import Known, fresh_slots, plan_intake
from calsched.scheduler.live import LiveView
from calsched.scheduler.outbox import OutboxWorker, no_answer
from calsched.settings import SchedulerSettings

__all__ = ["FAILPOINTS", "Scheduler"]

log = logging.getLogger("calsched.scheduler")
T = TypeVar("T")
Clock = Callable[[], datetime]

#: The named seams where a crash harness may stop the process (``failpoint=`` hook).
FAILPOINTS = ("after_commit", "after_wake", "after_outbox_send", "during_recovery")


def _no_failpoint(name: str) -> None:
    """The default hook: seams cost one call and do nothing."""


class Scheduler:
    """Heartbeats the backend, wakes agents for slots, and serves the agents' tools.

    Build it with settings, an open :class:`Journal`, a backend and a host, then
    ``await start()`` (or ``await run()``) inside an event loop, and ``await stop()``.
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
    ) -> None:
        if settings.identifier != journal.identifier:
            raise ConfigError(
                f"the scheduler's identifier {settings.identifier!r} differs from the "
                f"journal's {journal.identifier!r}"
            )
        self.settings = settings
        self._failpoint = failpoint
        self.journal = journal
        self.backend = backend
        self.host = host
        self.metrics = metrics or Metrics()
        self._clock = clock
        self._live = LiveView()
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
        )
        self._outbox = OutboxWorker(
            settings,
            self._gateway,
            backend,
            metrics=self.metrics,
            clock=clock,
            report_key=self._set_key_refused,
            reconciled=self._dispatch.pump,
            failpoint=failpoint,
        )
        # maxlen=0 keeps nothing: a cap of 0 turns the in-memory history off.
        self._history: deque[dict[str, Any]] = deque(maxlen=settings.history_cap)
        self._loops: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._last_heartbeat: datetime | None = None
        self._last_ok: datetime | None = None
        self._last_error: str | None = None
        self._key_refused = False
        self._restart_pending = False
        #: Set when a heartbeat answers ``restart_pending: true``.
        self.restart_requested = asyncio.Event()
        self._started = False

    # -- the live view ------------------------------------------------------------------

    def _absorb(self, applied: Applied) -> None:
        """Take committed views into the live view, history and metrics."""
        outbox = False
        kinds: Counter[str] = Counter()
        for event in applied.events:
            kinds[event.kind.value] += 1
            if notifies_backend(event.kind, event.state_to):
                outbox = True
        for kind, count in kinds.items():  # one labels() lookup per kind, not per event
            self.metrics.transitions.labels(kind).inc(count)
        for view in self._live.absorb(applied):
            self._remember(view)
        self.metrics.active_slots.set(len(self._live))
        if outbox:
            self._outbox.kick()

    def _remember(self, view: SlotView) -> None:
        self._history.append(
            {
                "slot_id": view.slot_id,
                "agent_id": view.agent_id,
                "status": view.state.value,
                "resolved_at": format_time(view.resolved_at or view.updated_at),
                "summary": view.summary,
                "reason": view.reason,
            }
        )

    # -- lifecycle of the scheduler itself -----------------------------------------------

    async def start(self) -> None:
        """Recover from the journal, then start the heartbeat loop and the outbox worker."""
        if self._started:
            return
        self._started = True
        await self.recover()
        self._loops = [
            asyncio.create_task(self._heartbeat_loop(), name="calsched-heartbeat"),
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

    async def stop(self) -> None:
        """Stop gracefully: no more beats, bounded wait for wakes, flush the outbox.

        Nothing committed is lost: a wake abandoned here leaves its slot ``dispatching``,
        which the next start re-dispatches; an undelivered outbox row stays in the outbox.
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
        await self._drain(self._dispatch.wakes, deadline)
        with contextlib.suppress(Exception):
            await self._outbox.flush(deadline)
        await self._drain(self._outbox.deliveries, deadline)
        await self._gateway.close()

    async def _drain(self, tasks: Iterable[asyncio.Task[Any]], deadline: float) -> None:
        pending = {t for t in tasks if not t.done()}
        if not pending:
            return
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        _, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)

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
        for view in reversed(recent):
            if view.terminal:
                self._remember(view)
        self.metrics.active_slots.set(len(self._live))
        self._failpoint("during_recovery")
        for view in views:
            if view.state is SlotState.dispatching:
                self._dispatch.spawn_wake(view, recovering=True)
        pending = sorted({v.agent_id for v in views if v.state is SlotState.pending})
        await self._dispatch.pump_many(pending, actor=Actor.recovery)
        await self._outbox.refresh_counts()
        self._outbox.kick()

    # -- heartbeat -----------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval_s
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.heartbeat_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must never die; next tick tries again
                log.exception("heartbeat failed unexpectedly")
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))

    async def heartbeat_once(self) -> None:
        """Send one heartbeat and take in the slots it returns. Never raises a backend error."""
        sent_at = self._clock()
        agents = await self._list_agents()
        request = HeartbeatRequest(
            identifier=self.settings.identifier,
            plugin_info=PluginInfo(),
            captured_at=sent_at,
            agents=agents,
            active_slots=[
                ActiveSlotReport(
                    id=v.slot_id, agent_id=v.agent_id, state=v.state, attempt=v.attempt
                )
                for v in self._live.sorted()
            ],
        )
        self._last_heartbeat = sent_at
        try:
            async with asyncio.timeout(self.settings.backend_deadline_s):
                response, rejected = await self.backend.heartbeat(request)
        except (BackendError, TimeoutError) as caught:
            exc = (
                no_answer(self.settings.backend_deadline_s)
                if isinstance(caught, TimeoutError)
                else caught
            )
            self.metrics.heartbeats.labels("failed").inc()
            self._last_error = str(exc)
            if isinstance(exc, BackendRefusedError):
                self._key_refused = True
            log.warning("heartbeat failed: %s", self._last_error)
            return
        self.metrics.heartbeats.labels("ok").inc()
        self._last_ok = self._clock()
        self._last_error = None
        self._key_refused = False
        self._restart_pending = response.restart_pending
        if response.restart_pending:
            self.restart_requested.set()
        for bad in rejected:
            log.warning("skipped an invalid slot from the backend: %s", bad.error)
        if response.slots_to_fire:
            await self._intake(response.slots_to_fire, sent_at)

    async def _list_agents(self) -> list[AgentReport]:
        try:
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
        known: dict[str, Known] = {}
        for slot_id, view in views.items():
            settled = None
            if view.terminal:
                settled = await self._gateway.read(self.journal.terminal_settled_at, slot_id)
            known[slot_id] = Known(ended=view.terminal, settled_at=settled)
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

    # -- the agents' tools (ports.SlotTools) ---------------------------------------------

    async def current_slot(self, agent_id: str) -> SlotView:
        """The agent's current slot; :class:`NoActiveSlotError` if it has none."""
        current = self._live.current(agent_id)
        if current is None:
            raise NoActiveSlotError(agent_id)
        return current

    async def complete(
        self, agent_id: str, summary: str | None = None, *, slot_id: str | None = None
    ) -> SlotView:
        """Complete the agent's current slot."""
        return await self._tool(agent_id, Trigger.complete, slot_id, summary=summary)

    async def abort(
        self, agent_id: str, reason: str | None = None, *, slot_id: str | None = None
    ) -> SlotView:
        """Abort the agent's current slot."""
        return await self._tool(agent_id, Trigger.abort, slot_id, reason=reason)

    async def pause(
        self, agent_id: str, reason: str | None = None, *, slot_id: str | None = None
    ) -> SlotView:
        """Pause the agent's current slot."""
        return await self._tool(agent_id, Trigger.pause, slot_id, reason=reason)

    async def resume(self, agent_id: str, *, slot_id: str | None = None) -> SlotView:
        """Resume the agent's paused slot."""
        return await self._tool(agent_id, Trigger.resume, slot_id)

    async def _tool(
        self,
        agent_id: str,
        trigger: Trigger,
        slot_id: str | None,
        *,
        summary: str | None = None,
        reason: str | None = None,
        actor: Actor = Actor.agent,
    ) -> SlotView:
        current = self._live.current(agent_id)
        if slot_id is not None and (current is None or current.slot_id != slot_id):
            raise StaleSlotError(agent_id, slot_id, current.slot_id if current else None)
        if current is None:
            raise NoActiveSlotError(agent_id)
        applied = await self._gateway.commit(
            [
                TransitionRequest(
                    current.slot_id,
                    trigger,
                    actor,
                    summary=summary,
                    reason=reason,
                    attempt=current.attempt,
                )
            ]
        )
        after = applied.view(current.slot_id, current)
        assert after is not None, "the tool's own slot is in its batch"
        if after.terminal:
            await self._dispatch.pump(agent_id)
        return after

    # -- status --------------------------------------------------------------------------

    def _set_key_refused(self, refused: bool) -> None:
        self._key_refused = refused

    @property
    def restart_pending(self) -> bool:
        """What the last successful heartbeat said of ``restart_pending``."""
        return self._restart_pending

    def active(self) -> list[SlotView]:
        """The live view: every non-terminal slot, oldest first."""
        return self._live.sorted()

    def status(self) -> dict[str, Any]:
        """The scheduler status in the protocol's shape (section 2), JSON-ready."""
        return {
            "enabled": True,
            "identifier": self.settings.identifier,
            "last_heartbeat": _opt_time(self._last_heartbeat),
            "heartbeat_every_s": self.settings.heartbeat_interval_s,
            "backend": {
                "last_ok": _opt_time(self._last_ok),
                "last_error": self._last_error,
                "key_refused": self._key_refused,
            },
            "active": [v.to_wire() for v in self._live.sorted()],
            "history": list(self._history)[::-1],
            "outbox": {"pending": self._outbox.counts.pending, "dead": self._outbox.counts.dead},
            "restart_pending": self._restart_pending,
        }


def _opt_time(value: datetime | None) -> str | None:
    return format_time(value) if value is not None else None
