"""The scheduler's status page (protocol section 2), built from its pieces, and the
recent history it shows.

The history is in memory and capped (``history_cap``; 0 keeps none): it bounds what
``status()`` shows, not what the journal keeps, which is everything.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

from calsched.model import SlotView
from calsched.scheduler.heartbeat import Heartbeat
from calsched.scheduler.live import LiveView
from calsched.scheduler.outbox import OutboxWorker
from calsched.settings import SchedulerSettings
from calsched.status import HistoryEntry, LeaseStatus, OutboxSummary, SchedulerStatus, SlotEntry


class StatusBoard:
    """What one scheduler shows of itself: its beats, live slots, history, outbox, lease."""

    def __init__(
        self,
        settings: SchedulerSettings,
        heartbeat: Heartbeat,
        live: LiveView,
        outbox: OutboxWorker,
        lease_status: Callable[[], LeaseStatus] | None,
    ) -> None:
        self._settings = settings
        self._heartbeat = heartbeat
        self._live = live
        self._outbox = outbox
        #: The lease this scheduler runs under (the daemon's LeaseKeeper).
        self._lease_status = lease_status
        # maxlen=0 keeps nothing: a cap of 0 turns the in-memory history off.
        self._history: deque[HistoryEntry] = deque(maxlen=settings.history_cap)

    def record(self, resolved: Iterable[SlotView]) -> None:
        """Add slots that just reached a terminal state to the history."""
        self._history.extend(HistoryEntry.from_view(v) for v in resolved)

    def reload(self, recent: Sequence[SlotView]) -> None:
        """Replace the history with the journal's recent slots (newest first), at start."""
        self._history.clear()
        self._history.extend(HistoryEntry.from_view(v) for v in reversed(recent) if v.terminal)

    def status(self) -> SchedulerStatus:
        """The scheduler status in the protocol's shape (section 2)."""
        counts = self._outbox.counts
        return SchedulerStatus(
            identifier=self._settings.identifier,
            last_heartbeat=self._heartbeat.last_sent,
            heartbeat_every_s=self._settings.heartbeat_interval_s,
            backend=self._heartbeat.health,
            active=[SlotEntry.from_view(v) for v in self._live.sorted()],
            history=list(self._history)[::-1],
            outbox=OutboxSummary(
                pending=counts.pending, dead=counts.dead, dead_slots=list(counts.dead_slots)
            ),
            restart_pending=self._heartbeat.restart_pending,
            lease=self._lease_status() if self._lease_status is not None else None,
        )
