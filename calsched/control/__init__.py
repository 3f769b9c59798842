"""The local control API agents use for their slot tools (protocol section 2).

Every request goes through, in this order:

1. the **Host check** (DNS rebinding): the ``Host`` header, without its port, must be one
   of ``allowed_hosts``, else 403 ``forbidden_host``. It applies to every route, ``/healthz``
   included: a loopback probe names ``127.0.0.1`` anyway, and one rule is easier to trust
   than a list of exceptions. A request without a ``Host`` header is refused the same way.
2. **authentication** (every route but ``/healthz`` and ``/readyz``): ``Authorization:
   Bearer <token>`` with the admin token or an agent token (:mod:`calsched.tokens`); else
   401 ``unauthorized``.
3. **authorization**: an agent token acts only on its own ``/v1/agents/<id>/…`` routes;
   elsewhere it gets 403 ``forbidden``.
4. the **body** (POST): at most ``max_body`` bytes, counted while it streams in (a
   ``Content-Length`` is not trusted), else 413 ``too_large``; it must be a JSON object
   (400 ``bad_request``; an empty body counts as ``{}``); its fields must have the right
   types and ``summary``/``reason`` at most ``max_field`` UTF-8 bytes, with no NUL
   character (422 ``invalid``).
   Unknown fields are ignored. ``slot_id``, if given, fences the call to that slot: a
   call for a slot that is no longer current is 409 ``stale_slot``.
5. the **Idempotency-Key** (POST, optional, 1 to 256 characters): a repeat by the same
   agent with the same key answers as the first call did and changes nothing (the answer
   is kept in the journal database with the change, :mod:`calsched.journal.idempotency`);
   the same key on a different request is 422 ``invalid``.

A call with the admin token is journaled with actor ``operator``, an agent token's with
``agent``. The outbox routes (``/v1/outbox/…``, admin only) retry or discard rows as the
operator (docs/protocol.md; 404 ``not_found``, 409 ``settled``).
``GET /v1/agents/<id>/status`` is what an agent may see of the status: its own
current slot and its recent history (:class:`~calsched.status.AgentStatus`).

Errors are ``{"error": code, "message": text}``. Errors of the tools map to
``no_active_slot`` 404, ``invalid_transition`` 409, ``stale_slot`` 409 and ``invalid``
422; a journal that cannot be written for a passing cause (a full disk, an I/O error) is
503 ``journal_unavailable`` naming the cause, with ``Retry-After``; anything else is
500 ``internal`` with a fixed message (the details go to the log, never a traceback to
the client). Tokens are never logged.

Modules, one concept each: :mod:`~calsched.control.app` (the Starlette app and its
limits), :mod:`~calsched.control.server` (uvicorn, signals left to the daemon),
:mod:`~calsched.control.middleware` (the ``Host`` check, the trace context),
:mod:`~calsched.control.auth` (tokens), :mod:`~calsched.control.body` (the body's checks),
:mod:`~calsched.control.idempotency` (keyed calls), :mod:`~calsched.control.answers` (the
error bodies and codes), and the routes: :mod:`~calsched.control.probes`,
:mod:`~calsched.control.agent_routes`, :mod:`~calsched.control.admin_routes`.
"""

from __future__ import annotations

from calsched.control.app import DEFAULT_ALLOWED_HOSTS, MAX_BODY, MAX_FIELD, create_control_app
from calsched.control.server import ControlServer, serve_control

__all__ = [
    "DEFAULT_ALLOWED_HOSTS",
    "MAX_BODY",
    "MAX_FIELD",
    "ControlServer",
    "create_control_app",
    "serve_control",
]
