"""The scheduler's settings: one validated object, built once and passed down.

``calsched.config`` builds it from a TOML file, ``CALSCHED_*`` variables and flags; a
library user builds it directly. Durations are seconds.
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field

from calsched.model import Id

__all__ = ["QueuePolicy", "SchedulerSettings"]


class QueuePolicy(enum.Enum):
    """What happens when a slot arrives for an agent that already has a current slot."""

    #: The newer slot waits (``pending``) until the current one resolves.
    queue = "queue"
    #: The current slot is aborted with reason ``superseded by <id>``; the newer one runs.
    replace = "replace"


class SchedulerSettings(BaseModel):
    """Tunables of :class:`calsched.scheduler.Scheduler`, with the defaults it ships.

    Example: ``SchedulerSettings(identifier="my-host", heartbeat_interval_s=10)``
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    identifier: Id = "calsched"
    heartbeat_interval_s: float = Field(default=30.0, gt=0)
    history_cap: int = Field(default=32, ge=0)
    policy: QueuePolicy = QueuePolicy.queue
    max_concurrent_wakes: int = Field(default=8, ge=1)
    wake_timeout_s: float = Field(default=30.0, gt=0)
    backend_deadline_s: float = Field(default=15.0, gt=0)
    #: ``None``: no limit; a slot later than this after ``scheduled_at`` is not woken.
    misfire_grace_s: float | None = Field(default=None, ge=0)
    #: Outbox retry: the first delay (doubled with each try, with jitter) and its cap.
    outbox_backoff_initial_s: float = Field(default=0.5, gt=0)
    outbox_backoff_max_s: float = Field(default=60.0, gt=0)
    outbox_poll_s: float = Field(default=1.0, gt=0)
    #: How long shutdown waits for in-flight wakes and the outbox before closing.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
