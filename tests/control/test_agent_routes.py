"""Tests for calsched.control.agent_routes: an agent's slot, status and tools."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from calsched.model import Actor, SlotState
from calsched.status import SchedulerStatus, SlotEntry
from calsched.tokens import agent_token
from tests.control.fakes import ADMIN, ALICE, BOB, SECRET, FakeTools, _view, auth


async def test_get_slot_answers_the_slot_view(client: httpx.AsyncClient) -> None:
    """GET .../slot answers the SlotEntry of the current slot."""
    response = await client.get("/v1/agents/alice/slot", headers=auth(ALICE))
    assert (
        response.json()
        == SlotEntry.from_view(_view("s-1", "alice", SlotState.in_progress)).to_wire()
    )


async def test_complete_passes_summary_and_answers_the_changed_slot(
    client: httpx.AsyncClient, tools: FakeTools
) -> None:
    """complete hands the summary to the tools and answers the slot after the change."""
    response = await client.post(
        "/v1/agents/alice/slot/complete", headers=auth(ALICE), json={"summary": "Report sent"}
    )
    assert response.status_code == 200
    assert response.json()["state"] == "completed"
    assert response.json()["summary"] == "Report sent"
    assert tools.calls == [("complete", "alice", "Report sent", None)]


@pytest.mark.parametrize("action", ["abort", "pause"])
async def test_reason_is_passed_through(
    client: httpx.AsyncClient, tools: FakeTools, action: str
) -> None:
    """abort and pause hand their reason to the tools."""
    response = await client.post(
        f"/v1/agents/alice/slot/{action}", headers=auth(ALICE), json={"reason": "why"}
    )
    assert response.status_code == 200
    assert response.json()["reason"] == "why"
    assert tools.calls == [(action, "alice", "why", None)]


@pytest.mark.parametrize(
    ("action", "body", "expected"),
    [
        ("complete", {"summary": "ok", "slot_id": "s-1"}, ("complete", "alice", "ok", "s-1")),
        ("abort", {"slot_id": "s-1"}, ("abort", "alice", None, "s-1")),
        ("pause", {"slot_id": "s-1"}, ("pause", "alice", None, "s-1")),
    ],
)
async def test_slot_id_is_passed_for_fencing(
    client: httpx.AsyncClient,
    tools: FakeTools,
    action: str,
    body: dict[str, Any],
    expected: tuple[str, ...],
) -> None:
    """A slot_id in the body reaches the tools as slot_id=."""
    response = await client.post(f"/v1/agents/alice/slot/{action}", headers=auth(ALICE), json=body)
    assert response.status_code == 200
    assert tools.calls == [expected]


async def test_resume_passes_slot_id(client: httpx.AsyncClient, tools: FakeTools) -> None:
    """resume passes slot_id through as well."""
    tools.slots["alice"] = _view("s-1", "alice", SlotState.paused)
    response = await client.post(
        "/v1/agents/alice/slot/resume", headers=auth(ALICE), json={"slot_id": "s-1"}
    )
    assert response.status_code == 200
    assert tools.calls == [("resume", "alice", None, "s-1")]


async def test_agent_id_with_a_slash_routes(tools: FakeTools, client: httpx.AsyncClient) -> None:
    """An agent id holding '/' (sent as %2F) reaches its own slot, with its own token."""
    tools.slots["team/alice"] = _view("s-9", "team/alice", SlotState.in_progress)
    token = agent_token(SECRET, "team/alice")
    response = await client.get("/v1/agents/team%2Falice/slot", headers=auth(token))
    assert response.status_code == 200
    assert response.json()["slot"]["id"] == "s-9"
    done = await client.post(
        "/v1/agents/team%2Falice/slot/complete", json={"summary": "ok"}, headers=auth(token)
    )
    assert done.status_code == 200
    assert tools.calls[-1] == ("complete", "team/alice", "ok", None)


async def test_agent_status_shows_only_the_agents_own_slots(
    client: httpx.AsyncClient, tools: FakeTools
) -> None:
    """GET /v1/agents/<id>/status: the agent's current slot; another's token is 403."""
    status = SchedulerStatus(
        identifier="host-a",
        heartbeat_every_s=30,
        active=[SlotEntry.from_view(v) for v in tools.slots.values()],
    )
    tools.status = lambda: status  # type: ignore[method-assign]
    mine = await client.get("/v1/agents/alice/status", headers=auth(ALICE))
    assert mine.status_code == 200
    body = mine.json()
    assert body["agent_id"] == "alice"
    assert body["current"]["slot"]["id"] == "s-1"
    assert body["waiting"] == []
    assert body["history"] == []
    other = await client.get("/v1/agents/bob/status", headers=auth(ALICE))
    assert other.status_code == 403


async def test_admin_calls_act_as_operator(client: httpx.AsyncClient, tools: FakeTools) -> None:
    """The admin token's tool calls carry actor operator; an agent token's, agent."""
    await client.post("/v1/agents/alice/slot/pause", json={}, headers=auth(ADMIN))
    await client.post("/v1/agents/bob/slot/pause", json={}, headers=auth(BOB))
    assert tools.actors == [Actor.operator, Actor.agent]
