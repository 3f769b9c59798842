"""The SQL journal: append-only events, the ``slots`` projection, the outbox, replay.

Synchronous and free of HTTP and asyncio: the scheduler reaches it through one thread.
"""

from __future__ import annotations

from calsched.journal.replay import Mismatch, fold
from calsched.journal.store import (
    Journal,
    OutboxCounts,
    OutboxRow,
    TransitionRequest,
)

__all__ = [
    "Journal",
    "Mismatch",
    "OutboxCounts",
    "OutboxRow",
    "TransitionRequest",
    "fold",
]
