"""An in-memory scheduler shaped like the Go seed: the comparison baseline, nothing more.

It follows ``seed/scheduler.go`` line by line where it matters for cost: one heartbeat
asks the backend for slots, and each returned slot is dispatched in order: skipped if
``active_by_slot_id`` has it, else recorded in ``active_by_slot_id`` and
``active_by_agent_id`` (the later slot of an agent overwrites the earlier one, as in the
seed) and handed to the host's ``wake_agent``. A failed wake resolves the slot as
aborted. The tools look the agent's slot up in ``active_by_agent_id``; a resolved slot
goes to a history bounded at 32 and to the backend as a status update.

No journal, no outbox, no retry: a restart forgets everything and a failed status update
is lost, which is exactly what calsched exists to fix. It speaks calsched's own ports
(:class:`~calsched.ports.Backend`, :class:`~calsched.ports.Host`) so a benchmark can put
the same fakes behind both and compare the schedulers alone.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from calsched.errors import BackendError, NoActiveSlotError
from calsched.model import HeartbeatRequest, Slot, SlotState, SlotUpdate, utcnow
from calsched.ports import Backend, Host, WakeRequest

__all__ = ["ActiveSlot", "SeedShapedScheduler"]

#: The seed's default bound on the in-memory history.
HISTORY_CAP = 32


@dataclass(slots=True)
class ActiveSlot:
    """The seed's ``ActiveSlot``: a slot between dispatch and its terminal status."""

    slot: Slot
    started_at: datetime
    last_heartbeat: datetime
    state: SlotState


class SeedShapedScheduler:
    """The seed's ``Scheduler`` in asyncio: heartbeat, dispatch, tools; memory only."""

    def __init__(self, identifier: str, backend: Backend, host: Host) -> None:
        self.identifier = identifier
        self.backend = backend
        self.host = host
        self.active_by_slot_id: dict[str, ActiveSlot] = {}
        self.active_by_agent_id: dict[str, ActiveSlot] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_CAP)
        self.last_heartbeat: datetime | None = None
        self.restart_pending = False

    async def heartbeat_once(self) -> None:
        """One beat: report the agents, then dispatch every returned slot in order."""
        payload = HeartbeatRequest(
            identifier=self.identifier,
            captured_at=utcnow(),
            agents=await self.host.list_agents(),
        )
        try:
            response, _rejected = await self.backend.heartbeat(payload)
        except BackendError:
            self.last_heartbeat = utcnow()
            return  # a network blip: the next tick retries, as in the seed
        self.last_heartbeat = utcnow()
        self.restart_pending = response.restart_pending
        for slot in response.slots_to_fire:
            await self._dispatch(slot)

    async def idle(self) -> None:
        """Nothing runs in the background here: every wake was awaited by the beat."""

    async def _dispatch(self, slot: Slot) -> None:
        if slot.id in self.active_by_slot_id:
            return  # re-listed before the backend saw the optimistic update
        now = utcnow()
        act = ActiveSlot(slot=slot, started_at=now, last_heartbeat=now, state=SlotState.in_progress)
        self.active_by_slot_id[slot.id] = act
        self.active_by_agent_id[slot.agent_id] = act
        message = slot.wake_options.override_message or slot.prompt_text
        if not message:
            message = f"[calendar] slot {slot.id}: {slot.title or ''}"
        request = WakeRequest(
            agent_id=slot.agent_id,
            message=message,
            source=f"calendar:slot-{slot.id}",
            slot_id=slot.id,
            attempt=1,
        )
        try:
            await self.host.wake_agent(request)
        except Exception as exc:  # the seed aborts on any wake error
            await self._resolve(slot.id, SlotState.aborted, None, f"wake-agent failed: {exc}")

    async def _resolve(
        self, slot_id: str, status: SlotState, summary: str | None, reason: str | None
    ) -> None:
        act = self.active_by_slot_id.pop(slot_id, None)
        if act is None:
            raise NoActiveSlotError(slot_id)
        # The seed deletes the agent's mapping even if a newer slot overwrote it.
        self.active_by_agent_id.pop(act.slot.agent_id, None)
        now = utcnow()
        self.history.append(
            {
                "slot_id": slot_id,
                "agent_id": act.slot.agent_id,
                "status": status.value,
                "resolved_at": now,
                "summary": summary,
                "reason": reason,
            }
        )
        await self._tell(slot_id, status, summary, reason)

    async def _tell(
        self, slot_id: str, status: SlotState, summary: str | None, reason: str | None
    ) -> None:
        update = SlotUpdate(
            identifier=self.identifier,
            status=status,
            attempt=1,
            summary=summary,
            reason=reason,
            occurred_at=utcnow(),
        )
        # Fire once: a failed update is lost (the seed's flaw, kept on purpose).
        with contextlib.suppress(BackendError):
            await self.backend.send_status(slot_id, update, str(uuid.uuid4()))

    def _of(self, agent_id: str) -> ActiveSlot:
        act = self.active_by_agent_id.get(agent_id)
        if act is None:
            raise NoActiveSlotError(agent_id)
        return act

    async def current_slot(self, agent_id: str) -> ActiveSlot:
        """The agent's active slot."""
        return self._of(agent_id)

    async def complete(self, agent_id: str, summary: str | None = None) -> None:
        """Resolve the agent's slot as completed."""
        await self._resolve(self._of(agent_id).slot.id, SlotState.completed, summary, None)

    async def abort(self, agent_id: str, reason: str | None = None) -> None:
        """Resolve the agent's slot as aborted."""
        await self._resolve(self._of(agent_id).slot.id, SlotState.aborted, None, reason)

    async def pause(self, agent_id: str, reason: str | None = None) -> None:
        """Mark the agent's slot paused (from any state, as the seed does)."""
        act = self._of(agent_id)
        act.state = SlotState.paused
        act.last_heartbeat = utcnow()
        await self._tell(act.slot.id, SlotState.paused, None, reason)

    async def resume(self, agent_id: str) -> None:
        """Mark the agent's slot in progress (from any state, as the seed does)."""
        act = self._of(agent_id)
        act.state = SlotState.in_progress
        act.last_heartbeat = utcnow()
        await self._tell(act.slot.id, SlotState.in_progress, None, None)
