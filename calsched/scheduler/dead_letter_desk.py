"""The operator's outbox actions in a running scheduler: retry or discard a row.

:class:`DeadLetterDesk` writes them through the scheduler's journal gateway (its one
write path, fenced by the lease like every other write), then has the outbox worker read
its counts again and pass at once, so a retried row is sent without waiting for a poll
and status shows the change. The rows' rules are :mod:`calsched.journal.dead_letters`'.
"""

from __future__ import annotations

import logging
from functools import partial

from calsched.journal.dead_letters import DeadLetters
from calsched.journal.rows import OutboxRow
from calsched.model import Actor
from calsched.scheduler.gateway import JournalGateway
from calsched.scheduler.outbox import OutboxWorker

__all__ = ["DeadLetterDesk"]

log = logging.getLogger("calsched.scheduler")


class DeadLetterDesk:
    """Retries and discards outbox rows for one scheduler (``ports.OutboxTools``)."""

    def __init__(self, gateway: JournalGateway, worker: OutboxWorker, letters: DeadLetters) -> None:
        self._gateway = gateway
        self._worker = worker
        self._letters = letters

    async def retry(self, row_id: int | None, *, actor: Actor = Actor.operator) -> list[int]:
        """Make a row (``None``: every dead row) due now; the ids retried."""
        ids = await self._gateway.write(partial(self._letters.retry_in, row_id=row_id, actor=actor))
        log.info("outbox rows retried by the %s: %s", actor.value, ids or "none")
        await self._changed()
        return ids

    async def discard(
        self, row_id: int, reason: str, *, actor: Actor = Actor.operator
    ) -> OutboxRow:
        """Settle a row without delivering it; the row as it was."""
        row = await self._gateway.write(
            partial(self._letters.discard_in, row_id=row_id, reason=reason, actor=actor)
        )
        log.info(
            "outbox row %s of slot %s discarded by the %s: %s",
            row.id,
            row.slot_id,
            actor.value,
            reason,
        )
        await self._changed()
        return row

    async def _changed(self) -> None:
        await self._worker.refresh_counts()
        self._worker.kick()
