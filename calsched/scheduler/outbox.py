"""The outbox worker: tells the backend every journaled change, in order, once it committed.

It delivers the oldest undelivered row of each slot, one try per due row. The row is its
own retry schedule: a failed try sets ``next_try_at`` from the row's ``tries``
(exponential, with equal jitter, capped at ``outbox_backoff_max_s``; a longer ``Retry-After``
up to the same cap), so the backoff survives a restart and no second schedule runs in memory.
Any failure, expected or not, is a failed try. A row that cannot even be marked means the
journal itself is failing: then no delivery starts until a backoff of its own has passed
(:class:`~calsched.scheduler.journal_hold.JournalHold`), so a journal that is down costs
one post and one log line per backoff step, not one per poll. A 409 reconciles the slot to
the backend's status through the journal gateway, like every other change of the live view.

Once marked, each outcome is logged: ``outbox delivered`` (info; one summary line for a
burst), ``outbox dead letter`` (error) and ``outbox reconciled`` (warning).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial

from calsched.errors import (
    BackendConflictError,
    BackendError,
    BackendRefusedError,
    BackendRejectedError,
    BackendUnavailableError,
    JournalError,
)
from calsched.journal import Journal, OutboxRow
from calsched.journal.store import OutboxCounts
from calsched.metrics import Metrics
from calsched.model import SlotState, SlotUpdate
from calsched.ports import Backend
from calsched.scheduler.backoff import equal_jitter, exponential
from calsched.scheduler.coalesce import Coalescer, Outcome
from calsched.scheduler.gateway import JournalGateway
from calsched.scheduler.journal_hold import JournalHold
from calsched.scheduler.loglines import LogLines
from calsched.settings import SchedulerSettings
from calsched.tracing import NO_TRACE, NO_TRACING, AttributeValue, Tracing

__all__ = ["OutboxWorker", "no_answer"]

log = logging.getLogger("calsched.scheduler")


def no_answer(deadline_s: float) -> BackendUnavailableError:
    """A backend call cut off by its deadline, as a passing fault."""
    return BackendUnavailableError(f"no answer within {deadline_s:g}s")


def _attributes(row: OutboxRow) -> dict[str, AttributeValue]:
    return {
        "calsched.slot_id": row.slot_id,
        "calsched.attempt": row.attempt,
        "calsched.status": row.status.value,
        "calsched.actor": "scheduler",
        "calsched.tries": row.tries,
    }


class OutboxWorker:
    """Delivers the outbox of one scheduler's journal.

    ``report_key`` hears whether the backend refused the key (for status);
    ``reconciled`` is awaited with the agent of a slot a 409 reconciled (so its next
    slot can start); ``failpoint`` is the crash harness's seam (``after_outbox_send``).
    """

    def __init__(
        self,
        settings: SchedulerSettings,
        gateway: JournalGateway,
        backend: Backend,
        *,
        metrics: Metrics,
        clock: Callable[[], datetime],
        report_key: Callable[[bool], None],
        reconciled: Callable[[str], Awaitable[None]],
        failpoint: Callable[[str], None],
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.settings = settings
        self._tracing = tracing
        self._gateway = gateway
        self.journal: Journal = gateway.journal
        self.backend = backend
        self.metrics = metrics
        self._clock = clock
        self._report_key = report_key
        self._reconciled = reconciled
        self._failpoint = failpoint
        #: The last counts read: rows waiting, and dead-lettered.
        self.counts = OutboxCounts(pending=0, dead=0)
        self._kick = asyncio.Event()
        self._deliveries: dict[str, asyncio.Task[bool]] = {}
        self._pass_lock = asyncio.Lock()
        #: Slot -> the last row whose delivery finished during the current outbox read.
        self._finished: dict[str, int] = {}
        self._counts_at = float("-inf")
        #: Holds every delivery while the journal fails.
        self.hold = JournalHold(settings, gateway.writer.availability, clock=clock)
        #: Deliveries ending together have their rows marked in one write.
        self.marker: Coalescer[int, None] = gateway.coalescer(self._mark_delivered)
        self._said_delivered = LogLines(log, "outbox delivered", "outbox rows delivered")

    def kick(self) -> None:
        """Something new is due: pass now rather than at the next poll."""
        self._kick.set()

    @property
    def deliveries(self) -> list[asyncio.Task[bool]]:
        """The deliveries in flight."""
        return list(self._deliveries.values())

    async def refresh_counts(self) -> None:
        self.counts = await self._gateway.read(self.journal.outbox_counts)
        self.metrics.outbox_pending.set(self.counts.pending)
        self.metrics.outbox_dead.set(self.counts.dead)

    async def run(self) -> None:
        while True:
            try:
                await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reading the outbox failed: hold, say so once a step
                self.hold.failed(exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.outbox_poll_s):
                    await self._kick.wait()

    async def pass_once(self) -> int:
        """Start a delivery for each slot's due head row; return how many started."""
        if self.hold.held:
            return 0
        async with self._pass_lock:
            # Cleared before reading, so a commit during the pass kicks the next one.
            self._kick.clear()
            # This read starts after every delivery finished so far was marked; only the
            # ones finishing while it runs can make a row it returns stale.
            self._finished.clear()
            rows = await self._gateway.read(self.journal.due_outbox, self._clock())
            started = 0
            for row in rows:
                if row.slot_id in self._deliveries:
                    continue  # that slot's head row is already being delivered
                if row.id <= self._finished.get(row.slot_id, 0):
                    continue  # delivered (or rescheduled) while we read: a stale row
                task = asyncio.create_task(self._deliver(row), name=f"deliver-{row.id}")
                self._deliveries[row.slot_id] = task
                task.add_done_callback(partial(self._delivery_done, row.slot_id, row.id))
                started += 1
        now = asyncio.get_running_loop().time()
        if now - self._counts_at >= self.settings.outbox_poll_s:
            # Counts are for status and metrics: once a poll interval is fresh enough,
            # and a busy outbox does not pay two count queries per pass.
            self._counts_at = now
            await self.refresh_counts()
        return started

    def _delivery_done(self, slot_id: str, row_id: int, task: asyncio.Task[bool]) -> None:
        if self._deliveries.get(slot_id) is task:
            del self._deliveries[slot_id]
        self._finished[slot_id] = max(row_id, self._finished.get(slot_id, 0))
        if task.cancelled() or task.exception() is not None or not task.result():
            return  # the row could not be marked: the next poll tries it, no kick
        # The slot's next row (if any) is due now.
        self._kick.set()

    async def flush(self, deadline: float) -> None:
        """At shutdown: one more pass over due rows, bounded by ``deadline``."""
        loop = asyncio.get_running_loop()
        timeout = max(0.0, deadline - loop.time())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                started = await self.pass_once()
                # A kick: a delivery finished during the pass, which then skipped its row
                # as stale; that slot's next row is due and only another pass sends it.
                while started or self._deliveries or self._kick.is_set():
                    if self._deliveries:
                        await asyncio.wait(set(self._deliveries.values()))
                    started = await self.pass_once()

    async def _deliver(self, row: OutboxRow) -> bool:
        """One try at one row. Returns whether the row was marked (delivered, dead, or
        rescheduled); a row that could not even be marked waits for the next poll.

        The row is its own retry schedule: a failed try sets ``next_try_at`` from the
        row's ``tries`` (:meth:`retry_wait`), so the backoff survives a restart and no
        second schedule runs in memory. Any failure, expected or not, is a failed try.
        """
        update = SlotUpdate(
            identifier=row.identifier,
            status=row.status,
            attempt=row.attempt,
            summary=row.summary,
            reason=row.reason,
            occurred_at=row.occurred_at,
        )
        try:
            await self._send(row, update)
        except asyncio.CancelledError:
            raise
        except JournalError as exc:  # the row could not be marked (after the post, maybe)
            self.hold.failed(exc)
            return False
        except Exception as exc:
            wait = self.retry_wait(row.tries, None)
            log.error(
                "delivering outbox row %s failed unexpectedly (%s); next try in %.1fs",
                row.id,
                type(exc).__name__,
                wait,
            )
            try:
                await self._reschedule(row, wait, f"unexpected {type(exc).__name__}")
                self.metrics.outbox_deliveries.labels("retried").inc()
            except Exception as failed:  # the journal itself may be what failed
                self.hold.failed(failed)
                return False
        self.hold.recovered()
        return True

    def retry_wait(self, tries: int, hint: float | None) -> float:
        """Seconds until the next try: exponential from the row's tries with equal jitter,
        or the backend's ``Retry-After`` if it asks for longer; capped either way.

        The hint is a floor, never a shortcut: a backend answering ``Retry-After: 0`` (or a
        negative value, or a date gone by) over and over is still asked on the schedule.
        """
        s = self.settings
        wait = equal_jitter(exponential(tries, s.outbox_backoff_initial_s, s.outbox_backoff_max_s))
        if hint is not None and math.isfinite(hint):
            wait = max(wait, hint)
        return min(wait, s.outbox_backoff_max_s)

    async def _reschedule(self, row: OutboxRow, wait: float, error: str) -> None:
        next_try = self._clock() + timedelta(seconds=wait)
        await self._gateway.write(
            lambda conn: self.journal.mark_retry_in(conn, row.id, next_try, error)
        )

    async def _send(self, row: OutboxRow, update: SlotUpdate) -> None:
        """One try, and the row marked with its outcome."""
        try:
            # A trace of its own: the row may go out long after its change, from another
            # process after a restart; its attributes name the slot and attempt.
            with self._tracing.span(
                "calsched.outbox.deliver", partial(_attributes, row), kind="client", parent=NO_TRACE
            ):
                async with asyncio.timeout(self.settings.backend_deadline_s):
                    await self.backend.send_status(row.slot_id, update, row.idempotency_key)
        except BackendConflictError as exc:
            held = SlotState(exc.status)
            reason = exc.reason
            applied = await self._gateway.commit_work(
                lambda conn: self.journal.settle_conflict_in(conn, row, held, reason)
            )
            self.metrics.outbox_deliveries.labels("reconciled").inc()
            log.warning(
                "outbox reconciled",
                extra={
                    "slot_id": row.slot_id,
                    "row_id": row.id,
                    "attempt": row.attempt,
                    "sent": row.status.value,
                    "backend_holds": held.value,
                    "changed": bool(applied.events),
                },
            )
            for event in applied.events:
                await self._reconciled(event.agent_id)
            return
        except BackendRejectedError as exc:
            await self._mark_dead(row, str(exc))
            return
        except (BackendRefusedError, BackendUnavailableError, TimeoutError) as exc:
            hint = exc.retry_after if isinstance(exc, BackendUnavailableError) else None
            self._report_key(isinstance(exc, BackendRefusedError))
            if isinstance(exc, TimeoutError):
                exc = no_answer(self.settings.backend_deadline_s)
            await self._reschedule(row, self.retry_wait(row.tries, hint), str(exc))
            self.metrics.outbox_deliveries.labels("retried").inc()
            return
        except BackendError as exc:
            await self._mark_dead(row, str(exc))
            return
        self._failpoint("after_outbox_send")
        self._report_key(False)
        await self.marker(row.id)
        self.metrics.outbox_deliveries.labels("delivered").inc()
        self._said_delivered.add(
            slot_id=row.slot_id,
            row_id=row.id,
            attempt=row.attempt,
            status=row.status.value,
            tries=row.tries + 1,
        )

    async def _mark_delivered(self, row_ids: list[int]) -> list[Outcome[None]]:
        try:
            await self._gateway.write(
                lambda conn: self.journal.mark_delivered_many_in(conn, row_ids)
            )
        except Exception:
            # The batch rolled back (a database error): each row in a write of its own,
            # so each delivery gets its own outcome.
            return await asyncio.gather(
                *(
                    self._gateway.write(partial(self.journal.mark_delivered_in, row_id=row_id))
                    for row_id in row_ids
                ),
                return_exceptions=True,
            )
        return [None] * len(row_ids)

    async def _mark_dead(self, row: OutboxRow, error: str) -> None:
        await self._gateway.write(lambda conn: self.journal.mark_dead_in(conn, row.id, error))
        self.metrics.outbox_deliveries.labels("dead_lettered").inc()
        log.error(
            "outbox dead letter",
            extra={
                "slot_id": row.slot_id,
                "row_id": row.id,
                "attempt": row.attempt,
                "status": row.status.value,
                "error": error,
            },
        )
