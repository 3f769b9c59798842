"""The live view: every non-terminal slot, as the journal has it, indexed by agent.

It changes only through :meth:`LiveView.absorb` (from a committed
:class:`~calsched.journal.store.Applied`) and :meth:`LiveView.load` (recovery), so it
equals the replay of the journal. The per-agent index keeps each agent's live slots in
receive order, so finding an agent's current slot or next pending slot never scans every
live slot.
"""

from __future__ import annotations

import bisect
import contextlib
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

from calsched.journal.store import Applied
from calsched.model import CURRENT_STATES, SlotState, SlotView

__all__ = ["LiveView"]


class LiveView:
    """The non-terminal slots of one scheduler, by slot id and by agent."""

    def __init__(self) -> None:
        self._slots: dict[str, SlotView] = {}
        #: Agent -> its live slots as (received_at, slot_id), oldest first.
        self._by_agent: dict[str, list[tuple[datetime, str]]] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, slot_id: object) -> bool:
        return slot_id in self._slots

    def get(self, slot_id: str) -> SlotView | None:
        """The slot's live view, or ``None`` if it is not live."""
        return self._slots.get(slot_id)

    def load(self, views: Iterable[SlotView]) -> None:
        """Start again from ``views`` (recovery)."""
        self._slots = {}
        self._by_agent = {}
        for view in views:
            self._slots[view.slot_id] = view
            self._index(view)

    def absorb(self, applied: Applied) -> list[SlotView]:
        """Take a committed batch in; return the views of the slots it ended."""
        ended: list[SlotView] = []
        for slot_id in applied.after:
            view = applied.view(slot_id, self._slots.get(slot_id))
            if view is None:
                continue  # a reconcile of a slot that had already ended here: not live
            old = self._slots.get(slot_id)
            if view.terminal:
                if old is not None:
                    del self._slots[slot_id]
                    self._unindex(old)
                ended.append(view)
                continue
            if old is not None and old.received_at != view.received_at:
                self._unindex(old)  # a new attempt: it takes its new place in the order
                old = None
            self._slots[slot_id] = view
            if old is None:
                self._index(view)
        return ended

    def sorted(self) -> list[SlotView]:
        """Every live slot, oldest received first."""
        return sorted(self._slots.values(), key=lambda v: (v.received_at, v.slot_id))

    def by_state(self) -> dict[str, int]:
        """How many live slots are in each state (for metrics: one pass, per scrape)."""
        return dict(Counter(v.state.value for v in self._slots.values()))

    def of_agent(self, agent_id: str) -> list[SlotView]:
        """The agent's live slots, oldest first."""
        return [self._slots[sid] for _, sid in self._by_agent.get(agent_id, ())]

    def current(self, agent_id: str) -> SlotView | None:
        """The agent's current slot (dispatching, in progress or paused), if any."""
        for view in self.of_agent(agent_id):
            if view.state in CURRENT_STATES:
                return view
        return None

    def next_pending(self, agent_id: str) -> SlotView | None:
        """The agent's oldest pending slot, if any."""
        return next((v for v in self.of_agent(agent_id) if v.state is SlotState.pending), None)

    def _index(self, view: SlotView) -> None:
        mine = self._by_agent.setdefault(view.agent_id, [])
        bisect.insort(mine, (view.received_at, view.slot_id))

    def _unindex(self, view: SlotView) -> None:
        mine = self._by_agent.get(view.agent_id)
        if mine is None:
            return
        with contextlib.suppress(ValueError):
            mine.remove((view.received_at, view.slot_id))
        if not mine:
            del self._by_agent[view.agent_id]
