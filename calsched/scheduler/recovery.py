"""Recovery on start: the journal's live slots reloaded, and those that were on their way
out sent again.

Only live slots are read (``ix_slots_state``), and the status page's recent history
(``ix_slots_recent``), never the whole history. ``pending`` and ``dispatching`` slots are
(re)dispatched, so a wake is at-least-once; ``in_progress`` and ``paused`` slots are
restored silently; undelivered outbox rows are picked up by the outbox worker.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from calsched.journal import Journal
from calsched.model import Actor, SlotState
from calsched.scheduler.dispatcher import Dispatcher
from calsched.scheduler.gateway import JournalGateway
from calsched.scheduler.live import LiveView
from calsched.scheduler.outbox import OutboxWorker
from calsched.scheduler.status_board import StatusBoard
from calsched.settings import SchedulerSettings

log = logging.getLogger("calsched.scheduler")


class Recovery:
    """Reloads one scheduler's live view and status history from its journal."""

    def __init__(
        self,
        settings: SchedulerSettings,
        journal: Journal,
        gateway: JournalGateway,
        live: LiveView,
        board: StatusBoard,
        dispatch: Dispatcher,
        outbox: OutboxWorker,
        *,
        failpoint: Callable[[str], None],
    ) -> None:
        self._settings = settings
        self._journal = journal
        self._gateway = gateway
        self._live = live
        self._board = board
        self._dispatch = dispatch
        self._outbox = outbox
        self._failpoint = failpoint

    async def recover(self) -> None:
        """Reload non-terminal slots; re-dispatch ``pending``/``dispatching`` ones."""
        views = await self._gateway.read(self._journal.load_active)
        cap = self._settings.history_cap
        recent = await self._gateway.read(self._journal.history, limit=cap) if cap else []
        self._live.load(views)
        self._board.reload(recent)
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
