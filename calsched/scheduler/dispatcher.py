"""The dispatcher: gives each idle agent its next slot, and wakes it.

Over the live view's per-agent index, so nothing scans every live slot. One commit
dispatches the next pending slot of every idle agent asked for; each agent is pumped by
one call at a time, and agents never wait for each other. Wakes run with the configured
bound on concurrency; a wake's outcome (``woke`` or ``wake_failed``) is committed through
the gateway, where the group writer shares commits between wakes that end together.

Each step is logged once it committed (:class:`~calsched.scheduler.loglines.LogLines`: one
info line per slot, one summary line for a burst): ``slot received``, ``slot dispatched``,
``slot woken``, or the warning ``wake failed`` naming the host it was sent to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from calsched.errors import (
    InvalidTransitionError,
    JournalError,
    SlotNotFoundError,
    WakeFailedError,
)
from calsched.journal import TransitionRequest
from calsched.metrics import Metrics
from calsched.model import Actor, SlotState, SlotView, Trigger
from calsched.ports import Host, WakeRequest
from calsched.scheduler.gateway import JournalGateway
from calsched.scheduler.live import LiveView
from calsched.scheduler.loglines import LogLines
from calsched.settings import SchedulerSettings
from calsched.tracing import NO_TRACING, Tracing

__all__ = ["INTAKE_CHUNK", "Dispatcher"]

log = logging.getLogger("calsched.scheduler")

#: Requests one intake commit takes at most (see :meth:`Dispatcher.intake`).
INTAKE_CHUNK = 2_000


class Dispatcher:
    """Pumps agents and runs their wakes (``failpoint``: the ``after_wake`` seam)."""

    def __init__(
        self,
        settings: SchedulerSettings,
        gateway: JournalGateway,
        live: LiveView,
        host: Host,
        *,
        metrics: Metrics,
        clock: Callable[[], datetime],
        failpoint: Callable[[str], None],
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.settings = settings
        self._tracing = tracing
        self._gateway = gateway
        self._live = live
        self.host = host
        self.metrics = metrics
        self._clock = clock
        self._failpoint = failpoint
        #: Set when the scheduler stops: no more dispatches.
        self.stopped = False
        self._wake_slots = asyncio.Semaphore(settings.max_concurrent_wakes)
        #: Agents a pump_many call is dispatching for, and those asked for meanwhile.
        self._pumping: set[str] = set()
        self._repump: set[str] = set()
        self._wakes: set[asyncio.Task[None]] = set()
        # The counter child every wake increments, looked up once.
        self._woken = metrics.wakes.labels("ok")
        #: Where wakes go, as log lines name it (an adapter's ``target``, else its class).
        self.target = str(getattr(host, "target", None) or type(host).__name__)
        self._said_received = LogLines(log, "slot received", "slots received")
        self._said_dispatched = LogLines(log, "slot dispatched", "slots dispatched")
        self._said_woken = LogLines(log, "slot woken", "slots woken")
        self._said_failed = LogLines(log, "wake failed", "wakes failed", level=logging.WARNING)

    @property
    def wakes(self) -> list[asyncio.Task[None]]:
        """The wakes in flight."""
        return list(self._wakes)

    async def pump(self, agent_id: str, *, actor: Actor = Actor.scheduler) -> None:
        """Dispatch the agent's oldest pending slot if it has no current slot."""
        await self.pump_many([agent_id], actor=actor)

    async def pump_many(self, agents: Sequence[str], *, actor: Actor = Actor.scheduler) -> None:
        """Dispatch, in one commit, the oldest pending slot of each idle agent; wake them.

        An agent is pumped by one call at a time (so two calls cannot dispatch two of its
        slots), but agents do not wait for each other: a call for an agent already being
        pumped is remembered, and the running call pumps that agent once more at its end.
        """
        if self.stopped:
            return
        mine = [a for a in dict.fromkeys(agents) if a not in self._pumping]
        self._repump.update(a for a in agents if a in self._pumping)
        if not mine:
            return
        self._pumping.update(mine)
        try:
            requests: list[TransitionRequest] = []
            for agent_id in mine:
                if self._live.current(agent_id) is not None:
                    continue
                head = self._live.next_pending(agent_id)
                if head is not None:
                    requests.append(
                        TransitionRequest(
                            head.slot_id, Trigger.dispatch, actor, attempt=head.attempt
                        )
                    )
            done = await self._gateway.commit_tolerant(requests) if requests else set()
        finally:
            self._pumping.difference_update(mine)
        self._wake_dispatched(requests, done)
        again = [a for a in mine if a in self._repump]
        if again:
            self._repump.difference_update(again)
            await self.pump_many(again, actor=actor)

    async def intake(self, requests: Sequence[TransitionRequest], agents: Sequence[str]) -> None:
        """Commit a heartbeat's intake ``requests``, then pump ``agents``.

        An agent with no live slot whose only requests here are receives is dispatched
        in the same commit: its oldest new slot (they all share the commit's receive
        time, so the live view orders them by id). A burst of new agents thus costs one
        commit, not a receive commit and then a dispatch commit. The journal still
        decides each dispatch after its receive, and refuses a second current slot.

        A large intake goes in commits of :data:`INTAKE_CHUNK` requests, in order: one
        transaction of 100,000 slots would hold the database's write lock for seconds,
        and its first wakes can start while the next chunk is written.
        """
        again: list[str] = []
        for start in range(0, len(requests), INTAKE_CHUNK):
            again += await self._intake_chunk(requests[start : start + INTAKE_CHUNK])
        await self.pump_many([*agents, *again])

    async def _intake_chunk(self, requests: Sequence[TransitionRequest]) -> list[str]:
        first: dict[str, str] = {}
        barred: set[str] = set(self._pumping)
        for request in requests:
            if request.trigger is Trigger.receive and request.slot is not None:
                agent_id = request.slot.agent_id
                if agent_id not in first or request.slot_id < first[agent_id]:
                    first[agent_id] = request.slot_id
            else:
                view = self._live.get(request.slot_id)
                if view is None:  # whose agent, unknown here: no dispatch in this commit
                    first.clear()
                    break
                barred.add(view.agent_id)
        starting = (
            []
            if self.stopped
            else [a for a in first if a not in barred and not self._live.of_agent(a)]
        )
        starts = [
            TransitionRequest(first[agent_id], Trigger.dispatch, Actor.scheduler)
            for agent_id in starting
        ]
        self._pumping.update(starting)
        try:
            done = await self._gateway.commit_tolerant([*requests, *starts])
        finally:
            self._pumping.difference_update(starting)
        for request in requests:  # committed: now they may be told
            slot = request.slot
            if request.trigger is Trigger.receive and slot is not None and slot.id in done:
                self._said_received.add(slot_id=slot.id, agent_id=slot.agent_id)
        self._wake_dispatched(starts, done)
        again = [a for a in starting if a in self._repump]
        self._repump.difference_update(again)
        return again

    def _wake_dispatched(self, requests: Sequence[TransitionRequest], done: set[str]) -> None:
        # Journal first: only a dispatch that committed (the view says so) is woken.
        for request in requests:
            view = self._live.get(request.slot_id)
            if request.slot_id in done and view is not None and view.state is SlotState.dispatching:
                self._said_dispatched.add(
                    slot_id=view.slot_id,
                    agent_id=view.agent_id,
                    attempt=view.attempt,
                    actor=request.actor.value,
                )
                self.spawn_wake(view, recovering=False)

    async def wake_settled(self, slot_id: str) -> None:
        """Wait until the wake of ``slot_id`` in flight, if any, has ended and committed.

        A host may hand the wake on (a queue) and its agent call a tool before ``woke``
        committed: the call waits for it instead of finding the slot still dispatching.
        """
        name = f"wake-{slot_id}"
        pending = [t for t in self._wakes if t.get_name() == name]
        if pending:
            # asyncio.wait, not gather: a cancelled tool call must not cancel the wake.
            await asyncio.wait(pending)

    def spawn_wake(self, view: SlotView, *, recovering: bool) -> None:
        """Wake the agent of ``view`` (a dispatching slot) in a task of its own."""
        task = asyncio.create_task(
            self._wake(view, recovering=recovering), name=f"wake-{view.slot_id}"
        )
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)

    async def _wake(self, view: SlotView, *, recovering: bool) -> None:
        # Journal first: this slot was committed dispatching before its wake began.
        actor = Actor.recovery if recovering else Actor.scheduler
        async with self._wake_slots:
            with self._tracing.slot_span("calsched.wake", view, actor, kind="client") as span:
                failure = await self._call_host(view)
                if failure is not None:
                    span.fail(failure)
        self._failpoint("after_wake")
        fields = {"slot_id": view.slot_id, "agent_id": view.agent_id, "attempt": view.attempt}
        if failure is None:
            recorded = await self._settle_wake(view, Trigger.woke, actor, None)
            latency = (self._clock() - view.received_at).total_seconds()
            self.metrics.dispatch_latency.observe(max(latency, 0.0))
            if recorded:
                self._said_woken.add(**fields, target=self.target, actor=actor.value)
        else:
            self.metrics.wakes.labels("failed").inc()
            recorded = await self._settle_wake(view, Trigger.wake_failed, actor, failure)
            # After the commit, whether or not it was recorded: the host failed either way.
            self._said_failed.add(**fields, target=self.target, cause=failure, recorded=recorded)
            await self.pump(view.agent_id)

    async def _call_host(self, view: SlotView) -> str | None:
        """Ask the host to wake the slot's agent; the failure, or ``None`` if it took it."""
        slot = view.slot
        request = WakeRequest(
            agent_id=view.agent_id,
            message=slot.wake_message(),
            source=slot.source,
            slot_id=view.slot_id,
            attempt=view.attempt,
            trace=self._tracing.headers(),
        )
        try:
            async with asyncio.timeout(self.settings.wake_timeout_s):
                await self.host.wake_agent(request)
            self._woken.inc()
        except WakeFailedError as exc:
            return str(exc)
        except TimeoutError:
            return f"wake-agent failed: timeout after {self.settings.wake_timeout_s:g}s"
        except Exception as exc:  # a broken host adapter fails the wake, not the loop
            return f"wake-agent failed: {type(exc).__name__}"
        return None

    async def _settle_wake(
        self, view: SlotView, trigger: Trigger, actor: Actor, reason: str | None
    ) -> bool:
        """Commit the wake's outcome; whether it was recorded."""
        try:
            # Wakes ending together share one write: each outcome is still its own.
            await self._gateway.settle(
                TransitionRequest(view.slot_id, trigger, actor, reason=reason, attempt=view.attempt)
            )
        except (InvalidTransitionError, SlotNotFoundError) as exc:
            # The slot moved on while the wake was in flight (aborted, superseded).
            log.info("slot %s: %s not recorded: %s", view.slot_id, trigger, exc)
            return False
        except JournalError as exc:
            # The wake happened; the journal still says dispatching, so the next start
            # wakes it again (the documented extra wake) rather than losing it.
            log.warning(
                "slot %s: %s not recorded (%s); it stays dispatching until the next start",
                view.slot_id,
                trigger,
                exc,
            )
            return False
        return True
