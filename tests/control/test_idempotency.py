"""Tests for calsched.control.idempotency: an Idempotency-Key answered once."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from calsched.control import create_control_app
from calsched.model import Slot
from tests.control.fakes import ADMIN, ALICE, BOB, SECRET, FakeTools, auth


async def test_repeat_with_the_same_key_answers_as_first_and_calls_once(
    client: httpx.AsyncClient, tools: FakeTools
) -> None:
    """A repeat of a keyed POST gets the first status and body; the tool ran once."""
    headers = {**auth(ALICE), "Idempotency-Key": "k-1"}
    first = await client.post("/v1/agents/alice/slot/pause", json={"reason": "x"}, headers=headers)
    again = await client.post("/v1/agents/alice/slot/pause", json={"reason": "x"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert [c[0] for c in tools.calls].count("pause") == 1
    # Without the key the same call is decided again (and refused: already paused).
    plain = await client.post(
        "/v1/agents/alice/slot/pause", json={"reason": "x"}, headers=auth(ALICE)
    )
    assert plain.status_code == 409


async def test_same_key_on_a_different_request_is_422(
    client: httpx.AsyncClient, tools: FakeTools
) -> None:
    """A key reused for another body or route is refused, and nothing runs."""
    headers = {**auth(ALICE), "Idempotency-Key": "k-2"}
    await client.post("/v1/agents/alice/slot/pause", json={"reason": "x"}, headers=headers)
    other_body = await client.post(
        "/v1/agents/alice/slot/pause", json={"reason": "y"}, headers=headers
    )
    other_route = await client.post("/v1/agents/alice/slot/resume", json={}, headers=headers)
    assert other_body.status_code == other_route.status_code == 422
    assert "Idempotency-Key" in other_body.json()["message"]
    assert [c[0] for c in tools.calls].count("resume") == 0


async def test_keys_are_per_agent(client: httpx.AsyncClient, tools: FakeTools) -> None:
    """Bob's call under alice's key is bob's own first call."""
    await client.post(
        "/v1/agents/alice/slot/pause", json={}, headers={**auth(ALICE), "Idempotency-Key": "k"}
    )
    bob = await client.post(
        "/v1/agents/bob/slot/pause", json={}, headers={**auth(BOB), "Idempotency-Key": "k"}
    )
    assert bob.status_code == 200
    assert bob.json()["slot"]["agent_id"] == "bob"


@pytest.mark.parametrize("key", ["", "k" * 257])
async def test_bad_key_length_is_422(client: httpx.AsyncClient, tools: FakeTools, key: str) -> None:
    """A key must be 1 to 256 characters."""
    headers = {**auth(ALICE), "Idempotency-Key": key}
    response = await client.post("/v1/agents/alice/slot/pause", json={}, headers=headers)
    assert response.status_code == 422
    assert "pause" not in [c[0] for c in tools.calls]


async def test_refused_call_keeps_no_answer(client: httpx.AsyncClient, tools: FakeTools) -> None:
    """A refused keyed call changed nothing: its repeat is decided again."""
    headers = {**auth(ALICE), "Idempotency-Key": "k-3"}
    refused = await client.post("/v1/agents/alice/slot/resume", json={}, headers=headers)
    assert refused.status_code == 409
    assert tools.kept == {}


async def test_concurrent_repeats_of_a_key_run_the_tool_once(
    client: httpx.AsyncClient, tools: FakeTools
) -> None:
    """Two requests with one key at once: the second waits for the first, then repeats it."""
    headers = {**auth(ALICE), "Idempotency-Key": "k-c"}
    answers = await asyncio.gather(
        *(
            client.post("/v1/agents/alice/slot/complete", json={"summary": "s"}, headers=headers)
            for _ in range(2)
        )
    )
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
    assert [c[0] for c in tools.calls].count("complete") == 1


def parse_slot(slot_id: str, agent_id: str) -> Slot:
    """A slot as a backend lists it."""
    from calsched.model import parse

    return parse(Slot, {"id": slot_id, "agent_id": agent_id, "title": "t"})


async def test_real_scheduler_journals_operator_and_keeps_keys(db_url: str) -> None:
    """Over a real scheduler (both databases): the admin token's pause is journaled as
    operator; a keyed resume repeated answers alike and adds one event."""
    from sqlalchemy import select

    from calsched.journal import Journal
    from calsched.journal.schema import events
    from calsched.scheduler import Scheduler
    from calsched.settings import SchedulerSettings
    from calsched.testing import InMemoryBackend, InMemoryHost

    journal = Journal.open(db_url, "host-a", upgrade=True)
    backend = InMemoryBackend()
    backend.to_fire = [parse_slot("s-1", "alice")]
    sched = Scheduler(SchedulerSettings(identifier="host-a"), journal, backend, InMemoryHost())
    try:
        await sched.recover()
        await sched.heartbeat_once()
        await sched.idle()
        app = create_control_app(sched, secret=SECRET)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            paused = await http.post("/v1/agents/alice/slot/pause", json={}, headers=auth(ADMIN))
            assert paused.status_code == 200, paused.text
            headers = {**auth(ALICE), "Idempotency-Key": "r-1"}
            first = await http.post("/v1/agents/alice/slot/resume", json={}, headers=headers)
            again = await http.post("/v1/agents/alice/slot/resume", json={}, headers=headers)
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json()
        with journal.engine.connect() as conn:
            rows = conn.execute(select(events.c.kind, events.c.actor).order_by(events.c.seq)).all()
        assert [tuple(r) for r in rows][-2:] == [("pause", "operator"), ("resume", "agent")]
        assert [kind for kind, _ in rows].count("resume") == 1
    finally:
        await sched.stop()
        journal.close()
