"""The outbox's hold while the journal fails: no delivery starts until a backoff step of
its own has passed.

A row that cannot be marked after its post, or an outbox that cannot be read, means the
journal itself is failing. The row stays due, so it is posted again after the step (its
idempotency key lets the backend drop the repeat); the wait doubles (the outbox's backoff
rule) while the journal keeps failing, so a journal that is down costs one post and one
log line per step, not one per poll. A passing fault the journal writer already named
(:class:`~calsched.journal.availability.Availability`) is logged here at debug only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from calsched.errors import JournalError, JournalUnavailableError
from calsched.journal.availability import Availability
from calsched.scheduler.backoff import equal_jitter, exponential
from calsched.settings import SchedulerSettings

log = logging.getLogger("calsched.scheduler")


class JournalHold:
    """Whether the outbox waits for a failing journal, and until when."""

    def __init__(
        self,
        settings: SchedulerSettings,
        availability: Availability,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self._settings = settings
        self._availability = availability
        self._clock = clock
        #: While the journal fails: how many marks failed in a row, and until when to wait.
        self._failures = 0
        self._until: datetime | None = None

    @property
    def held(self) -> bool:
        """Whether deliveries wait for a failing journal's backoff to pass."""
        return self._until is not None and self._clock() < self._until

    def failed(self, exc: BaseException) -> None:
        """The journal failed (a row could not be marked, the outbox not read): hold
        every delivery for a backoff step."""
        if self.held:
            return  # another delivery of this pass already held the outbox and said so
        self._failures += 1
        s = self._settings
        wait = equal_jitter(
            exponential(self._failures - 1, s.outbox_backoff_initial_s, s.outbox_backoff_max_s)
        )
        self._until = self._clock() + timedelta(seconds=wait)
        said = self._availability.cause is not None
        if isinstance(exc, JournalUnavailableError) and said:
            # The journal writer said what is wrong once for the whole episode; here the
            # backoff alone is news.
            log.debug("%s; outbox deliveries held, next try in %.1fs", exc, wait)
            return
        what = (
            f"journal unavailable: {exc}"
            if isinstance(exc, JournalError)
            else f"outbox failed unexpectedly: {type(exc).__name__}: {exc}"
        )
        log.error("%s; outbox deliveries held, next try in %.1fs", what, wait)

    def recovered(self) -> None:
        """A row was marked again: deliveries resume (said once, if they were held)."""
        if self._failures:
            log.warning("journal available again: outbox deliveries resume")
        self._failures = 0
        self._until = None
