"""Tests for calsched.control.answers: each error of the tools as the protocol's code."""

from __future__ import annotations

import logging

import httpx
import pytest

from calsched.errors import (
    InvalidInputError,
    JournalError,
    JournalUnavailableError,
)
from calsched.model import SlotState
from calsched.tokens import agent_token
from tests.control.fakes import ADMIN, ALICE, SECRET, FakeTools, auth


async def test_stale_slot_is_409(client: httpx.AsyncClient, tools: FakeTools) -> None:
    """A slot_id that is not the agent's current slot is 409 stale_slot; nothing changes."""
    response = await client.post(
        "/v1/agents/alice/slot/complete", headers=auth(ALICE), json={"slot_id": "s-old"}
    )
    assert response.status_code == 409
    assert response.json()["error"] == "stale_slot"
    assert "s-old" in response.json()["message"]
    assert tools.slots["alice"].state is SlotState.in_progress


async def test_no_active_slot_is_404(client: httpx.AsyncClient) -> None:
    """An agent without a current slot gets 404 no_active_slot."""
    carol = agent_token(SECRET, "carol")
    for method, path in [("GET", "slot"), ("POST", "slot/complete")]:
        response = await client.request(method, f"/v1/agents/carol/{path}", headers=auth(carol))
        assert response.status_code == 404
        assert response.json() == {
            "error": "no_active_slot",
            "message": "agent 'carol' has no active slot",
        }


async def test_invalid_transition_is_409(client: httpx.AsyncClient) -> None:
    """resume of a slot that is not paused is 409 invalid_transition."""
    response = await client.post("/v1/agents/alice/slot/resume", headers=auth(ALICE), json={})
    assert response.status_code == 409
    assert response.json()["error"] == "invalid_transition"


@pytest.mark.parametrize(
    "failure",
    [JournalError("db at postgresql://u:pw@h/db is locked"), RuntimeError("bug"), KeyError("k")],
    ids=["calsched error", "runtime error", "key error"],
)
async def test_internal_errors_are_500_without_details(
    client: httpx.AsyncClient,
    tools: FakeTools,
    failure: Exception,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Unexpected errors are 500 internal with a fixed message; the log has no token."""
    tools.fail_with = failure
    with caplog.at_level(logging.DEBUG):
        response = await client.post("/v1/agents/alice/slot/complete", headers=auth(ALICE), json={})
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal",
        "message": "internal error; see the calsched log",
    }
    assert "Traceback" not in response.text
    assert caplog.records
    assert ALICE not in caplog.text
    assert ALICE.rsplit(".", 1)[-1] not in caplog.text


async def test_journal_unavailable_is_503_naming_the_cause_and_not_logged_per_call(
    client: httpx.AsyncClient, tools: FakeTools, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk is 503 journal_unavailable naming it, with Retry-After, not 500; the
    journal writer logs the episode once, so the API adds no line per call."""
    tools.fail_with = JournalUnavailableError("journal", "disk full", "database or disk is full")
    with caplog.at_level(logging.DEBUG, logger="calsched"):
        for _ in range(3):
            response = await client.post(
                "/v1/agents/alice/slot/complete", headers=auth(ALICE), json={}
            )
            assert response.status_code == 503
            assert response.headers["retry-after"] == "5"
            assert response.json() == {
                "error": "journal_unavailable",
                "message": "journal unavailable: disk full; try again later",
            }
    assert [r for r in caplog.records if r.name.startswith("calsched.control")] == []


async def test_invalid_input_from_tools_is_422(client: httpx.AsyncClient, tools: FakeTools) -> None:
    """An InvalidInputError raised by the tools is the caller's mistake: 422 invalid."""
    tools.fail_with = InvalidInputError("summary", "too odd")
    response = await client.post("/v1/agents/alice/slot/complete", headers=auth(ALICE), json={})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid"


async def test_unknown_route_and_method_answer_json(client: httpx.AsyncClient) -> None:
    """Unknown paths and methods get the protocol's error shape too."""
    missing = await client.get("/v1/nothing", headers=auth(ADMIN))
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    wrong = await client.get("/v1/agents/alice/slot/complete", headers=auth(ALICE))
    assert wrong.status_code == 405
    assert wrong.json()["error"] == "method_not_allowed"
