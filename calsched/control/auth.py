"""Who is calling the control API, and what they may do (steps 2 and 3 of
:mod:`calsched.control`).

``Authorization: Bearer <token>`` carries the admin token or an agent token, both derived
from the daemon secret (:mod:`calsched.tokens`); anything else is 401 ``unauthorized``. An
agent token acts only on its own ``/v1/agents/<id>/…`` routes; elsewhere it is 403
``forbidden``. Tokens are never logged.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from calsched.control.answers import ApiError
from calsched.model import MAX_ID_CHARS
from calsched.tokens import agent_of_token, verify_admin_token


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a valid token speaks for: the admin, or one agent."""

    agent_id: str | None

    @property
    def admin(self) -> bool:
        """True for the admin token."""
        return self.agent_id is None


class Auth:
    """The token checks of every authenticated route, for one daemon secret."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def caller(self, request: Request) -> Caller:
        """The caller a valid bearer token names; 401 without one."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            if verify_admin_token(self.secret, token):
                return Caller(agent_id=None)
            agent_id = agent_of_token(self.secret, token)
            if agent_id is not None:
                return Caller(agent_id=agent_id)
        raise ApiError(
            401,
            "unauthorized",
            "a valid token is required: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )

    def admin(self, request: Request) -> None:
        """Pass the admin token; 401 without a valid token, 403 for an agent's."""
        if not self.caller(request).admin:
            raise ApiError(403, "forbidden", "this route needs the admin token")

    def agent(self, request: Request) -> str:
        """The route's agent id, once the caller may act for it."""
        caller = self.caller(request)
        agent_id: str = request.path_params["agent_id"]
        if not caller.admin and caller.agent_id != agent_id:
            raise ApiError(403, "forbidden", "an agent token acts only on its own agent's routes")
        if len(agent_id) > MAX_ID_CHARS:
            raise ApiError(422, "invalid", f"agent_id: at most {MAX_ID_CHARS} characters")
        return agent_id
