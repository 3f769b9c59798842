"""Backoff between failed tries: the one jitter rule of the outbox and the heartbeat.

Equal jitter (AWS architecture blog, "Exponential Backoff And Jitter"): half the wait is
fixed, half random, so tries of many slots or hosts spread out but never come sooner than
half the schedule. The schedules themselves live with their owners: the outbox derives
its wait from a row's durable ``tries``, the heartbeat from its failures in a row.
"""

from __future__ import annotations

import random

__all__ = ["equal_jitter", "exponential"]


def exponential(tries: int, initial: float, cap: float) -> float:
    """``initial`` doubled ``tries`` times, capped at ``cap`` (no overflow for any tries)."""
    return min(cap, initial * 2.0 ** min(max(tries, 0), 64))


def equal_jitter(base: float) -> float:
    """A wait between ``base / 2`` and ``base``."""
    return base / 2 + random.uniform(0, base / 2)
