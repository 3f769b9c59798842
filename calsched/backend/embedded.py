"""The embedded calendar as a :class:`~calsched.ports.Backend`, with no port opened.

:func:`embedded_backend` puts the reference backend's app (:func:`create_backend_app`)
over a :class:`LocalCalendar` behind an :class:`HttpBackend` whose transport is
:class:`httpx.ASGITransport`: the scheduler speaks the real protocol (auth header, JSON,
status codes, size cap) to a calendar kept in the journal's own database. The daemon's
embedded calendar and a library host's are this same function.
"""

from __future__ import annotations

import secrets

import httpx

from calsched.backend.calendar import LocalCalendar
from calsched.backend.http import DEFAULT_MAX_RESPONSE_BYTES, HttpBackend
from calsched.backend.server import create_backend_app

__all__ = ["EMBEDDED_URL", "embedded_backend"]

#: The base URL the embedded backend answers on: never resolved (``.invalid``), since
#: requests go to the in-process app.
EMBEDDED_URL = "http://embedded-calendar.invalid"


def embedded_backend(
    calendar: LocalCalendar, *, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
) -> HttpBackend:
    """A backend serving ``calendar`` in-process; close it (``async with``) when done.

    Example: ``backend = embedded_backend(LocalCalendar(journal.engine))``
    """
    # A fresh key per backend: nothing outside this process ever needs it.
    key = secrets.token_urlsafe(32)
    return HttpBackend(
        EMBEDDED_URL,
        key,
        max_response_bytes=max_response_bytes,
        transport=httpx.ASGITransport(app=create_backend_app(calendar, key)),
    )
