"""The agents' tools: one transition on the agent's current slot, and its kept answer.

:class:`ToolDesk` is what :class:`~calsched.scheduler.Scheduler`'s ``complete``, ``abort``,
``pause`` and ``resume`` share. It checks the call against the live view (the agent's
current slot, the slot the call names), commits the transition through the journal
gateway, and, for a call with an ``Idempotency-Key``, keeps the answer in the same
transaction, so the change and the answer a retry repeats commit together or not at all.
Each call that committed is logged on one info line (``tool call``) with its actor.
"""

from __future__ import annotations

import logging
from functools import partial

from sqlalchemy import Connection

from calsched.errors import NoActiveSlotError, StaleSlotError
from calsched.journal import Journal, TransitionRequest
from calsched.journal.idempotency import IdempotencyStore, Remembered, ToolKey
from calsched.journal.store import Applied
from calsched.model import Actor, SlotState, SlotView, Trigger
from calsched.scheduler.dispatcher import Dispatcher
from calsched.scheduler.gateway import JournalGateway
from calsched.scheduler.live import LiveView
from calsched.status import SlotEntry
from calsched.tracing import NO_TRACING, Tracing

__all__ = ["ToolDesk"]

log = logging.getLogger("calsched.scheduler")


class ToolDesk:
    """Carries out the agents' tool calls for one scheduler."""

    def __init__(
        self,
        gateway: JournalGateway,
        live: LiveView,
        dispatcher: Dispatcher,
        keys: IdempotencyStore,
        *,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self._gateway = gateway
        self._tracing = tracing
        self.journal: Journal = gateway.journal
        self._live = live
        self._dispatch = dispatcher
        self._keys = keys

    def current(self, agent_id: str) -> SlotView:
        """The agent's current slot; :class:`NoActiveSlotError` if it has none."""
        current = self._live.current(agent_id)
        if current is None:
            raise NoActiveSlotError(agent_id)
        return current

    async def recall(self, agent_id: str, key: str) -> Remembered | None:
        """The answer a tool call of ``agent_id`` under ``key`` got, if one is kept."""
        return await self._gateway.read(self._keys.recall, agent_id, key)

    async def act(
        self,
        agent_id: str,
        trigger: Trigger,
        slot_id: str | None,
        key: ToolKey | None,
        actor: Actor,
        *,
        summary: str | None = None,
        reason: str | None = None,
    ) -> SlotView:
        """Fire ``trigger`` on the agent's current slot (the one ``slot_id`` names, if
        given: else :class:`StaleSlotError`); the slot after the change.

        One span, the child of the caller's (the control API continues its trace); the
        wake of the agent's next slot, if this ends one, is its child. On a slot still
        ``dispatching`` (but for an abort) it first waits for the wake in flight to end.
        """
        current = self._live.current(agent_id)
        if (
            current is not None
            and current.state is SlotState.dispatching
            and trigger is not Trigger.abort  # an abort needs no wake: a hung one must not wait
        ):
            # Woken but ``woke`` not yet committed: decide on the slot as the wake left it.
            await self._dispatch.wake_settled(current.slot_id)
            current = self._live.current(agent_id)
        name = f"calsched.tool {trigger.value}"
        span = (
            self._tracing.slot_span(name, current, actor)
            if current is not None
            else self._tracing.span(
                name, {"calsched.agent_id": agent_id, "calsched.actor": actor.value}
            )
        )
        with span:
            return await self._act(current, agent_id, trigger, slot_id, key, actor, summary, reason)

    async def _act(
        self,
        current: SlotView | None,
        agent_id: str,
        trigger: Trigger,
        slot_id: str | None,
        key: ToolKey | None,
        actor: Actor,
        summary: str | None,
        reason: str | None,
    ) -> SlotView:
        if slot_id is not None and (current is None or current.slot_id != slot_id):
            raise StaleSlotError(agent_id, slot_id, current.slot_id if current else None)
        if current is None:
            raise NoActiveSlotError(agent_id)
        request = TransitionRequest(
            current.slot_id,
            trigger,
            actor,
            summary=summary,
            reason=reason,
            attempt=current.attempt,
        )
        if key is None:
            applied = await self._gateway.commit([request])
        else:
            applied = await self._gateway.commit_work(
                partial(self._apply_keyed, [request], current, key)
            )
        after = applied.view(current.slot_id, current)
        assert after is not None, "the tool's own slot is in its batch"
        log.info(
            "tool call",
            extra={
                "tool": trigger.value,
                "actor": actor.value,
                "agent_id": agent_id,
                "slot_id": current.slot_id,
                "attempt": current.attempt,
                "state": after.state.value,
                "keyed": key is not None,
            },
        )
        if after.terminal:
            await self._dispatch.pump(agent_id)
        return after

    def _apply_keyed(
        self,
        requests: list[TransitionRequest],
        current: SlotView,
        key: ToolKey,
        conn: Connection,
    ) -> Applied:
        """The transition and the answer its key will repeat, in one transaction."""
        applied = self.journal.apply_in(conn, requests)
        after = applied.view(current.slot_id, current)
        assert after is not None, "the tool's own slot is in its batch"
        body = SlotEntry.from_view(after).to_wire()
        self._keys.remember_in(conn, current.agent_id, key, 200, body)
        return applied
