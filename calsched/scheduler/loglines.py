"""Log lines of slot events that may come in bursts: one line per slot, or one per burst.

A slot's life is told at info level, one line per step (received, dispatched, woken,
delivered). A heartbeat that brings 10,000 slots would print 10,000 lines of each, at
about 50 µs a line: :class:`LogLines` gathers the lines of one kind that happen in the
same turn of the event loop (one commit's slots, the wakes one group commit settled) and
prints them one per slot while there are at most :data:`PER_SLOT_MAX`, else one summary
line with the count (and each slot's line at debug level). A disabled level costs one
``isEnabledFor`` call.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["PER_SLOT_MAX", "LogLines"]

#: A burst of more lines than this, in one turn of the loop, becomes one summary line.
PER_SLOT_MAX = 10

#: Fields that differ per slot: a summary line names the first and last slot instead.
_PER_SLOT = frozenset({"slot_id", "agent_id", "attempt", "row_id"})


class LogLines:
    """Lines of one event kind (``event``, ``summary`` for a burst) on ``logger``."""

    def __init__(
        self,
        logger: logging.Logger,
        event: str,
        summary: str,
        *,
        level: int = logging.INFO,
        most: int = PER_SLOT_MAX,
    ) -> None:
        self._log = logger
        self.event = event
        self.summary = summary
        self._level = level
        self._most = most
        self._pending: list[dict[str, Any]] = []
        self._scheduled = False

    def add(self, **fields: Any) -> None:
        """One slot's line; printed at the end of this turn of the loop (at once when no
        loop runs)."""
        if not self._log.isEnabledFor(self._level):  # debug is below: off too
            return
        self._pending.append(fields)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Print what was gathered: each line, or the summary and each line at debug."""
        batch, self._pending = self._pending, []
        self._scheduled = False
        if not batch:
            return
        if len(batch) <= self._most:
            for fields in batch:
                self._log.log(self._level, self.event, extra=fields)
            return
        agents = {fields.get("agent_id") for fields in batch}
        # What every line shares (the actor, a wake failure's target and cause) is kept.
        shared = {
            key: value
            for key, value in batch[0].items()
            if key not in _PER_SLOT and all(f.get(key) == value for f in batch)
        }
        self._log.log(
            self._level,
            self.summary,
            extra={
                **shared,
                "count": len(batch),
                "agents": len(agents),
                "first_slot": batch[0].get("slot_id"),
                "last_slot": batch[-1].get("slot_id"),
            },
        )
        if self._log.isEnabledFor(logging.DEBUG):
            for fields in batch:
                self._log.debug(self.event, extra=fields)
