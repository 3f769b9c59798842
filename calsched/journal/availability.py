"""Whether the journal can be written: one line when it stops, one when it is back.

A full disk fails every write until space returns. Each caller gets its own
:class:`~calsched.errors.JournalUnavailableError` (a 503 at the control API), but the
operator needs one clear line, not one per call: :class:`Availability` logs "journal
unavailable: <cause>" when an episode starts (or its cause changes) and "journal
available again" on the first commit after it.
"""

from __future__ import annotations

import logging
import threading

from calsched.errors import JournalUnavailableError

__all__ = ["Availability"]

log = logging.getLogger("calsched.journal")


class Availability:
    """The journal's write availability, fed with the outcome of every transaction."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: The cause of the current episode; ``None`` while writes commit.
        self.cause: str | None = None
        #: Writes refused in the current episode, and episodes seen (for tests, status).
        self.failures = 0
        self.episodes = 0

    def failed(self, exc: JournalUnavailableError) -> None:
        """A transaction failed for a passing fault."""
        with self._lock:
            self.failures += 1
            if exc.cause == self.cause:
                return
            if self.cause is None:
                self.episodes += 1
            self.cause = exc.cause
        log.error(
            "journal unavailable: %s (%s); tool calls answer 503 and deliveries wait "
            "until a write succeeds",
            exc.cause,
            exc.detail,
        )

    def committed(self) -> None:
        """A transaction committed."""
        if self.cause is None:  # the hot path: no lock
            return
        with self._lock:
            cause, failures = self.cause, self.failures
            self.cause = None
            self.failures = 0
        if cause is not None:
            log.warning("journal available again after %d failed writes (%s)", failures, cause)
