"""Tests for calsched.control.admin_routes: status, metrics and the outbox actions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from calsched.control import create_control_app
from calsched.metrics import CONTENT_TYPE, Metrics
from calsched.model import Actor, SlotState
from calsched.status import SchedulerStatus
from tests.control.fakes import ADMIN, ALICE, SECRET, T0, FakeTools, auth


async def test_admin_token_reads_status(client: httpx.AsyncClient) -> None:
    """The admin token gets the scheduler status as JSON."""
    response = await client.get("/v1/status", headers=auth(ADMIN))
    assert response.status_code == 200
    assert response.json() == SchedulerStatus(identifier="host-a", heartbeat_every_s=30).to_wire()


async def test_admin_token_reads_metrics(client: httpx.AsyncClient, metrics: Metrics) -> None:
    """/metrics serves the registry in Prometheus text with its content type."""
    metrics.heartbeats.labels("ok").inc()
    response = await client.get("/metrics", headers=auth(ADMIN))
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    assert 'calsched_heartbeats_total{outcome="ok"} 1.0' in response.text


async def test_metrics_without_registry_is_not_found(tools: FakeTools) -> None:
    """Without a Metrics object /metrics is a JSON 404, after the admin check."""
    app = create_control_app(tools, secret=SECRET)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        assert (await http.get("/metrics", headers=auth(ALICE))).status_code == 403
        response = await http.get("/metrics", headers=auth(ADMIN))
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


class FakeOutbox:
    """OutboxTools over a dict of waiting rows, raising the real errors."""

    def __init__(self) -> None:
        from calsched.journal.rows import OutboxRow

        self.rows = {
            7: OutboxRow(
                id=7,
                event_seq=3,
                idempotency_key="k",
                identifier="host-a",
                slot_id="s-1",
                attempt=1,
                status=SlotState.paused,
                summary=None,
                reason="x",
                occurred_at=T0,
                tries=4,
                next_try_at=T0,
                last_error="HTTP 422",
                delivered_at=None,
                dead_at=T0,
            ),
        }
        self.calls: list[tuple[str, int | None, str | None, Actor]] = []

    async def retry(self, row_id: int | None, *, actor: Actor = Actor.operator) -> list[int]:
        from calsched.errors import OutboxRowNotFoundError

        self.calls.append(("retry", row_id, None, actor))
        if row_id is not None and row_id not in self.rows:
            raise OutboxRowNotFoundError(row_id)
        return [row_id] if row_id is not None else sorted(self.rows)

    async def discard(self, row_id: int, reason: str, *, actor: Actor = Actor.operator) -> Any:
        from calsched.errors import OutboxRowNotFoundError

        self.calls.append(("discard", row_id, reason, actor))
        if row_id not in self.rows:
            raise OutboxRowNotFoundError(row_id, settled=True)
        return self.rows.pop(row_id)


@pytest.fixture
async def outbox_client(tools: FakeTools) -> AsyncIterator[tuple[httpx.AsyncClient, FakeOutbox]]:
    fake = FakeOutbox()
    app = create_control_app(tools, secret=SECRET, outbox=fake)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        yield http, fake


async def test_outbox_routes_act_as_the_operator(
    outbox_client: tuple[httpx.AsyncClient, FakeOutbox],
) -> None:
    """Retry one, retry every dead row, discard with a reason: each as actor operator."""
    http, fake = outbox_client
    one = await http.post("/v1/outbox/7/retry", headers=auth(ADMIN))
    assert (one.status_code, one.json()) == (200, {"retried": [7]})
    every = await http.post("/v1/outbox/dead/retry", headers=auth(ADMIN))
    assert every.json() == {"retried": [7]}
    gone = await http.post(
        "/v1/outbox/7/discard", headers=auth(ADMIN), json={"reason": "slot deleted"}
    )
    assert gone.status_code == 200
    assert gone.json()["discarded"]["id"] == 7
    assert gone.json()["discarded"]["state"] == "dead"
    assert gone.json()["reason"] == "slot deleted"
    assert [c[3] for c in fake.calls] == [Actor.operator] * 3
    assert fake.calls[-1][:3] == ("discard", 7, "slot deleted")


async def test_outbox_routes_refuse_agents_and_bad_requests(
    outbox_client: tuple[httpx.AsyncClient, FakeOutbox],
) -> None:
    """An agent token is 403; no reason 422; unknown row 404; a settled row 409."""
    http, fake = outbox_client
    agent = await http.post("/v1/outbox/7/retry", headers=auth(ALICE))
    assert (agent.status_code, agent.json()["error"]) == (403, "forbidden")
    no_reason = await http.post("/v1/outbox/7/discard", headers=auth(ADMIN), json={})
    assert (no_reason.status_code, no_reason.json()["error"]) == (422, "invalid")
    unknown = await http.post("/v1/outbox/8/retry", headers=auth(ADMIN))
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")
    settled = await http.post("/v1/outbox/8/discard", headers=auth(ADMIN), json={"reason": "r"})
    assert (settled.status_code, settled.json()["error"]) == (409, "settled")
    assert [c[:2] for c in fake.calls] == [("retry", 8), ("discard", 8)]


async def test_outbox_routes_without_outbox_tools(client: httpx.AsyncClient) -> None:
    """An app built without them says so (404), after the admin check."""
    answer = await client.post("/v1/outbox/7/retry", headers=auth(ADMIN))
    assert (answer.status_code, answer.json()["error"]) == (404, "not_found")
