"""Backend adapters: the HTTP client, the embedded local calendar and the reference server.

- :class:`HttpBackend` speaks protocol section 1 to a remote calendar backend.
- :class:`LocalCalendar` keeps a calendar in the journal's database;
  :class:`CalendarBackend` serves it to a scheduler in-process.
- :func:`create_backend_app` serves a :class:`LocalCalendar` over HTTP (the reference
  backend, also what the integration tests run against).
"""

from __future__ import annotations

from calsched.backend.calendar import (
    CalendarBackend,
    CalendarSlot,
    CalendarStatus,
    LocalCalendar,
    Receipt,
    StatusOutcome,
)
from calsched.backend.http import HttpBackend
from calsched.backend.server import create_backend_app

__all__ = [
    "CalendarBackend",
    "CalendarSlot",
    "CalendarStatus",
    "HttpBackend",
    "LocalCalendar",
    "Receipt",
    "StatusOutcome",
    "create_backend_app",
]
