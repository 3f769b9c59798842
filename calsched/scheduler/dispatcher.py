"""The dispatcher: gives each idle agent its next slot, and wakes it.

Over the live view's per-agent index, so nothing scans every live slot. One commit
dispatches the next pending slot of every idle agent asked for; each agent is pumped by
one call at a time, and agents never wait for each other. Wakes run with the configured
bound on concurrency; a wake's outcome (``woke`` or ``wake_failed``) is committed through
the gateway, where the group writer shares commits between wakes that end together.
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
from calsched.settings import SchedulerSettings

__all__ = ["Dispatcher"]

log = logging.getLogger("calsched.scheduler")


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
    ) -> None:
        self.settings = settings
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
        for request in requests:
            view = self._live.get(request.slot_id)
            if request.slot_id in done and view is not None and view.state is SlotState.dispatching:
                self.spawn_wake(view, recovering=False)
        again = [a for a in mine if a in self._repump]
        if again:
            self._repump.difference_update(again)
            await self.pump_many(again, actor=actor)

    def spawn_wake(self, view: SlotView, *, recovering: bool) -> None:
        """Wake the agent of ``view`` (a dispatching slot) in a task of its own."""
        task = asyncio.create_task(
            self._wake(view, recovering=recovering), name=f"wake-{view.slot_id}"
        )
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)

    async def _wake(self, view: SlotView, *, recovering: bool) -> None:
        # Journal first: this slot was committed dispatching before its wake began.
        slot = view.slot
        request = WakeRequest(
            agent_id=view.agent_id,
            message=slot.wake_message(),
            source=slot.source,
            slot_id=view.slot_id,
            attempt=view.attempt,
        )
        actor = Actor.recovery if recovering else Actor.scheduler
        failure: str | None = None
        async with self._wake_slots:
            try:
                async with asyncio.timeout(self.settings.wake_timeout_s):
                    await self.host.wake_agent(request)
                self.metrics.wakes.labels("ok").inc()
            except WakeFailedError as exc:
                failure = str(exc)
            except TimeoutError:
                failure = f"wake-agent failed: timeout after {self.settings.wake_timeout_s:g}s"
            except Exception as exc:  # a broken host adapter fails the wake, not the loop
                failure = f"wake-agent failed: {type(exc).__name__}"
        self._failpoint("after_wake")
        if failure is None:
            await self._settle_wake(view, Trigger.woke, actor, None)
            latency = (self._clock() - view.received_at).total_seconds()
            self.metrics.dispatch_latency.observe(max(latency, 0.0))
        else:
            self.metrics.wakes.labels("failed").inc()
            log.warning("slot %s: %s", view.slot_id, failure)
            await self._settle_wake(view, Trigger.wake_failed, actor, failure)
            await self.pump(view.agent_id)

    async def _settle_wake(
        self, view: SlotView, trigger: Trigger, actor: Actor, reason: str | None
    ) -> None:
        try:
            await self._gateway.commit(
                [
                    TransitionRequest(
                        view.slot_id, trigger, actor, reason=reason, attempt=view.attempt
                    )
                ]
            )
        except (InvalidTransitionError, SlotNotFoundError) as exc:
            # The slot moved on while the wake was in flight (aborted, superseded).
            log.info("slot %s: %s not recorded: %s", view.slot_id, trigger, exc)
        except JournalError as exc:
            # The wake happened; the journal still says dispatching, so the next start
            # wakes it again (the documented extra wake) rather than losing it.
            log.warning(
                "slot %s: %s not recorded (%s); it stays dispatching until the next start",
                view.slot_id,
                trigger,
                exc,
            )
