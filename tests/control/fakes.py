"""Fakes and tokens shared by the control API tests: tools over a dict, a fixed secret."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from calsched.errors import (
    InvalidTransitionError,
    NoActiveSlotError,
    StaleSlotError,
)
from calsched.journal.idempotency import Remembered
from calsched.model import Actor, Slot, SlotState, SlotView, utcnow
from calsched.status import SchedulerStatus, SlotEntry
from calsched.tokens import admin_token, agent_token

SECRET = b"control-test-secret-0123456789ab"
ADMIN = admin_token(SECRET)
ALICE = agent_token(SECRET, "alice")
BOB = agent_token(SECRET, "bob")
T0 = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)


def _view(slot_id: str, agent_id: str, state: SlotState) -> SlotView:
    return SlotView(
        identifier="host-a",
        slot_id=slot_id,
        agent_id=agent_id,
        state=state,
        attempt=1,
        slot=Slot(id=slot_id, agent_id=agent_id, title="Daily report"),
        received_at=T0,
        started_at=T0,
        updated_at=T0,
        resolved_at=None,
        summary=None,
        reason=None,
        last_seq=1,
    )


class FakeTools:
    """SlotTools over a dict agent -> current slot, raising the real errors."""

    def __init__(self) -> None:
        self.slots: dict[str, SlotView] = {}
        self.calls: list[tuple[str, str, str | None, str | None]] = []
        self.fail_with: Exception | None = None
        #: The actor and key of every tool call, and the answers kept under keys.
        self.actors: list[Actor] = []
        self.kept: dict[tuple[str, str], Remembered] = {}

    def _keep(self, agent_id: str, opts: dict[str, Any], view: SlotView) -> SlotView:
        """Record the actor; keep the answer under the call's key, as the scheduler does."""
        self.actors.append(opts.get("actor", Actor.agent))
        key = opts.get("key")
        if key is not None:
            body = SlotEntry.from_view(view).to_wire()
            self.kept[(agent_id, key.key)] = Remembered(key.fingerprint, 200, body, utcnow())
        return view

    async def recall(self, agent_id: str, key: str) -> Remembered | None:
        self.calls.append(("recall", agent_id, key, None))
        return self.kept.get((agent_id, key))

    def _current(self, agent_id: str, slot_id: str | None) -> SlotView:
        if self.fail_with is not None:
            raise self.fail_with
        view = self.slots.get(agent_id)
        if view is None:
            if slot_id is not None:
                raise StaleSlotError(agent_id, slot_id, None)
            raise NoActiveSlotError(agent_id)
        if slot_id is not None and slot_id != view.slot_id:
            raise StaleSlotError(agent_id, slot_id, view.slot_id)
        return view

    def _move(
        self, agent_id: str, slot_id: str | None, trigger: str, sources: set[SlotState], **kw: Any
    ) -> SlotView:
        view = self._current(agent_id, slot_id)
        if view.state not in sources:
            raise InvalidTransitionError(view.slot_id, view.state.value, trigger)
        new = dataclasses.replace(view, **kw)
        if new.terminal:
            del self.slots[agent_id]
        else:
            self.slots[agent_id] = new
        return new

    async def current_slot(self, agent_id: str) -> SlotView:
        self.calls.append(("current_slot", agent_id, None, None))
        return self._current(agent_id, None)

    async def complete(
        self, agent_id: str, summary: str | None = None, *, slot_id: str | None = None, **kw: Any
    ) -> SlotView:
        self.calls.append(("complete", agent_id, summary, slot_id))
        live = {SlotState.in_progress, SlotState.paused}
        view = self._move(
            agent_id, slot_id, "complete", live, state=SlotState.completed, summary=summary
        )
        return self._keep(agent_id, kw, view)

    async def abort(
        self, agent_id: str, reason: str | None = None, *, slot_id: str | None = None, **kw: Any
    ) -> SlotView:
        self.calls.append(("abort", agent_id, reason, slot_id))
        live = {SlotState.dispatching, SlotState.in_progress, SlotState.paused}
        view = self._move(agent_id, slot_id, "abort", live, state=SlotState.aborted, reason=reason)
        return self._keep(agent_id, kw, view)

    async def pause(
        self, agent_id: str, reason: str | None = None, *, slot_id: str | None = None, **kw: Any
    ) -> SlotView:
        self.calls.append(("pause", agent_id, reason, slot_id))
        live = {SlotState.in_progress}
        view = self._move(agent_id, slot_id, "pause", live, state=SlotState.paused, reason=reason)
        return self._keep(agent_id, kw, view)

    async def resume(self, agent_id: str, *, slot_id: str | None = None, **kw: Any) -> SlotView:
        self.calls.append(("resume", agent_id, None, slot_id))
        view = self._move(
            agent_id, slot_id, "resume", {SlotState.paused}, state=SlotState.in_progress
        )
        return self._keep(agent_id, kw, view)

    def status(self) -> SchedulerStatus:
        self.calls.append(("status", "", None, None))
        return SchedulerStatus(identifier="host-a", heartbeat_every_s=30)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
