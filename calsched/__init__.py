"""calsched: a crash-tolerant calendar-slot scheduler for AI-agent hosts.

Slots move through an explicit state machine (:mod:`calsched.lifecycle`); every transition
is appended to a SQL journal (:mod:`calsched.journal`) before it takes effect, so a restart
replays the active slots instead of losing them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("calsched")
except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
