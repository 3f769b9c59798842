"""Backend adapters: the HTTP client, the embedded local calendar and the reference server.

- :class:`HttpBackend` speaks protocol section 1 to a remote calendar backend.
- :class:`LocalCalendar` keeps a calendar in the journal's database;
  :func:`embedded_backend` serves it to a scheduler in-process.
- :func:`create_backend_app` serves a :class:`LocalCalendar` over HTTP (the reference
  backend, also what the integration tests run against, with the planned faults of
  :mod:`calsched.backend.faults`).

The names are loaded on first use: ``calsched run`` against a remote backend imports
:mod:`calsched.backend.http` alone, not the calendar or the reference server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from calsched._lazy import lazy_getattr

if TYPE_CHECKING:
    from calsched.backend.calendar import CalendarSlot, CalendarStatus, LocalCalendar
    from calsched.backend.embedded import embedded_backend
    from calsched.backend.http import HttpBackend
    from calsched.backend.receipts import Receipt, StatusOutcome
    from calsched.backend.server import create_backend_app

__all__ = [
    "CalendarSlot",
    "CalendarStatus",
    "HttpBackend",
    "LocalCalendar",
    "Receipt",
    "StatusOutcome",
    "create_backend_app",
    "embedded_backend",
]

_HOMES = {
    "CalendarSlot": "calsched.backend.calendar",
    "CalendarStatus": "calsched.backend.calendar",
    "LocalCalendar": "calsched.backend.calendar",
    "Receipt": "calsched.backend.receipts",
    "StatusOutcome": "calsched.backend.receipts",
    "HttpBackend": "calsched.backend.http",
    "create_backend_app": "calsched.backend.server",
    "embedded_backend": "calsched.backend.embedded",
}


__getattr__ = lazy_getattr(__name__, _HOMES)
