"""Tests for calsched.control.auth: the bearer token's caller, and what it may reach."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from calsched.model import SlotState
from calsched.tokens import agent_token
from tests.control.fakes import ADMIN, ALICE, BOB, FakeTools, _view, auth

ADMIN_ROUTES = [("GET", "/v1/status"), ("GET", "/metrics")]
ALICE_ROUTES = [
    ("GET", "/v1/agents/alice/slot", None),
    ("POST", "/v1/agents/alice/slot/complete", {"summary": "done"}),
    ("POST", "/v1/agents/alice/slot/abort", {"reason": "gave up"}),
    ("POST", "/v1/agents/alice/slot/pause", {"reason": "lunch"}),
    ("POST", "/v1/agents/alice/slot/resume", {}),
]
BAD_TOKENS = {
    "none": {},
    "bad": auth("agent.YWxpY2U.not-the-mac"),
    "other secret": auth(agent_token(b"another-secret-0123456789abcdef!", "alice")),
    "wrong scheme": {"Authorization": f"Basic {ALICE}"},
    "empty bearer": {"Authorization": "Bearer "},
}


@pytest.mark.parametrize("route", ADMIN_ROUTES + [r[:2] for r in ALICE_ROUTES])
@pytest.mark.parametrize("headers", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
async def test_no_or_bad_token_is_unauthorized(
    client: httpx.AsyncClient, tools: FakeTools, route: tuple[str, str], headers: dict[str, str]
) -> None:
    """Every route but /healthz answers 401 unauthorized to a missing or bad token."""
    method, path = route
    response = await client.request(method, path, headers=headers, json={})
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert tools.calls == []


@pytest.mark.parametrize("route", ADMIN_ROUTES)
@pytest.mark.parametrize("token", [ALICE, BOB], ids=["alice", "bob"])
async def test_agent_token_on_admin_route_is_forbidden(
    client: httpx.AsyncClient, tools: FakeTools, route: tuple[str, str], token: str
) -> None:
    """An agent token on /v1/status or /metrics is 403 forbidden."""
    method, path = route
    response = await client.request(method, path, headers=auth(token))
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert tools.calls == []


@pytest.mark.parametrize("route", ALICE_ROUTES, ids=lambda r: r[1].rsplit("/", 1)[-1])
async def test_other_agents_token_is_forbidden(
    client: httpx.AsyncClient, tools: FakeTools, route: tuple[str, str, Any]
) -> None:
    """Bob's token on Alice's routes is 403 forbidden and touches nothing."""
    method, path, body = route
    response = await client.request(method, path, headers=auth(BOB), json=body)
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert tools.calls == []


@pytest.mark.parametrize("token", [ALICE, ADMIN], ids=["own agent", "admin"])
@pytest.mark.parametrize("route", ALICE_ROUTES, ids=lambda r: r[1].rsplit("/", 1)[-1])
async def test_own_and_admin_tokens_act(
    client: httpx.AsyncClient, tools: FakeTools, route: tuple[str, str, Any], token: str
) -> None:
    """Alice's own token and the admin token both act on Alice's slot."""
    method, path, body = route
    if path.endswith("/resume"):
        tools.slots["alice"] = _view("s-1", "alice", SlotState.paused)
    response = await client.request(method, path, headers=auth(token), json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["slot"]["id"] == "s-1"
    assert answer["slot"]["agent_id"] == "alice"
    assert [call[1] for call in tools.calls] == ["alice"]


async def test_overlong_agent_id_from_admin_is_422(client: httpx.AsyncClient) -> None:
    """An agent id longer than the protocol allows is 422 invalid."""
    response = await client.get(f"/v1/agents/{'a' * 257}/slot", headers=auth(ADMIN))
    assert response.status_code == 422
