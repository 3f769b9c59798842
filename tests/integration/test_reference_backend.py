"""The reference backend on a loopback port, driven by HttpBackend (and raw HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from calsched.backend.calendar import CalendarStatus, LocalCalendar
from calsched.backend.http import HttpBackend
from calsched.errors import (
    BackendConflictError,
    BackendError,
    BackendRefusedError,
    BackendRejectedError,
    BackendUnavailableError,
)
from calsched.model import HeartbeatRequest, SlotState, SlotUpdate
from calsched.testing import FaultPlan, serve_backend

Client = Callable[..., HttpBackend]


def beat(identifier: str = "host-a") -> HeartbeatRequest:
    """A heartbeat from ``identifier``."""
    return HeartbeatRequest(identifier=identifier, captured_at=datetime.now(UTC))


def update(status: SlotState = SlotState.in_progress, attempt: int = 1) -> SlotUpdate:
    """A status update from host-a."""
    return SlotUpdate(
        identifier="host-a", status=status, attempt=attempt, occurred_at=datetime.now(UTC)
    )


def past(minutes: float = 1) -> datetime:
    """A time ``minutes`` ago."""
    return datetime.now(UTC) - timedelta(minutes=minutes)


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    """The Authorization header the reference backend accepts."""
    return {"Authorization": f"Bearer {api_key}"}


# -- the protocol -------------------------------------------------------------------------


async def test_serves_on_loopback(backend_url: str) -> None:
    """serve_backend binds 127.0.0.1 on a free port."""
    assert backend_url.startswith("http://127.0.0.1:")
    assert int(backend_url.rsplit(":", 1)[1]) > 0


async def test_heartbeat_returns_due_slots(calendar: LocalCalendar, make_client: Client) -> None:
    """A beat returns due slots with their fields; future slots wait; fired ones re-list."""
    calendar.add("s1", "bob", fire_at=past(), title="Report", prompt_text="write it")
    calendar.add("later", "bob", fire_at=past(-60))
    client = make_client()
    response, rejected = await client.heartbeat(beat())
    assert [(s.id, s.agent_id, s.title, s.prompt_text) for s in response.slots_to_fire] == [
        ("s1", "bob", "Report", "write it")
    ]
    assert rejected == []
    assert response.restart_pending is False
    assert calendar.get("s1").holder == "host-a"
    again, _ = await client.heartbeat(beat())
    assert [s.id for s in again.slots_to_fire] == ["s1"]
    other, _ = await client.heartbeat(beat("host-b"))
    assert other.slots_to_fire == []


async def test_status_updates_are_recorded(calendar: LocalCalendar, make_client: Client) -> None:
    """Status posts move the slot and leave one receipt each; the slot stops being listed."""
    calendar.add("s1", "bob", fire_at=past())
    client = make_client()
    await client.heartbeat(beat())
    await client.send_status("s1", update(SlotState.in_progress), "k1")
    await client.send_status("s1", update(SlotState.completed), "k2")
    assert calendar.get("s1").status is CalendarStatus.completed
    assert [r.idempotency_key for r in calendar.receipts("s1")] == ["k1", "k2"]
    response, _ = await client.heartbeat(beat())
    assert response.slots_to_fire == []


async def test_slot_ids_with_slashes_round_trip(
    calendar: LocalCalendar, make_client: Client
) -> None:
    """A slot id with '/', spaces and '%' reaches the right slot."""
    calendar.add("team/a b%1", "bob")
    await make_client().send_status("team/a b%1", update(), "k1")
    assert calendar.get("team/a b%1").status is CalendarStatus.in_progress


async def test_conflict(calendar: LocalCalendar, make_client: Client) -> None:
    """Another terminal status for a completed slot is a 409 carrying the held status."""
    calendar.add("s1", "bob")
    client = make_client()
    await client.send_status("s1", update(SlotState.completed), "k1")
    with pytest.raises(BackendConflictError) as caught:
        await client.send_status("s1", update(SlotState.aborted), "k2")
    assert (caught.value.status, caught.value.status_code) == ("completed", 409)


async def test_unknown_slot_is_rejected(make_client: Client) -> None:
    """A status for an unknown slot is a 404 rejection."""
    with pytest.raises(BackendRejectedError) as caught:
        await make_client().send_status("ghost", update(), "k1")
    assert caught.value.status_code == 404


@pytest.mark.parametrize("call", ["heartbeat", "status"])
async def test_wrong_key_is_refused(
    calendar: LocalCalendar, make_client: Client, call: str
) -> None:
    """A wrong key is a 401 refusal on both routes, and changes nothing."""
    calendar.add("s1", "bob", fire_at=past())
    client = make_client(api_key="not-the-key")
    send = (
        client.heartbeat(beat())
        if call == "heartbeat"
        else client.send_status("s1", update(), "k1")
    )
    with pytest.raises(BackendRefusedError) as caught:
        await send
    assert caught.value.status_code == 401
    assert calendar.get("s1").status is CalendarStatus.scheduled
    assert calendar.receipts() == []


async def test_idempotent_replay_gives_the_same_answer(
    backend_url: str, calendar: LocalCalendar, auth: dict[str, str]
) -> None:
    """A replayed Idempotency-Key gets the same body (flagged as replayed), one receipt."""
    calendar.add("s1", "bob")
    headers = {**auth, "Idempotency-Key": "k1"}
    async with httpx.AsyncClient(base_url=backend_url) as http:
        first = await http.post("/v1/slots/s1/status", json=update().to_wire(), headers=headers)
        second = await http.post("/v1/slots/s1/status", json=update().to_wire(), headers=headers)
        listed = await http.get("/v1/receipts", params={"slot_id": "s1"}, headers=auth)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["ok"] is True
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert [r["idempotency_key"] for r in listed.json()["receipts"]] == ["k1"]


@pytest.mark.parametrize(
    ("path", "content", "headers", "status", "code"),
    [
        ("/v1/heartbeat", b"{not json", {}, 400, "bad_request"),
        ("/v1/heartbeat", b'{"captured_at": "2026-11-27T22:00:00Z"}', {}, 422, "invalid"),
        (
            "/v1/slots/s1/status",
            b'{"identifier": "host-a"}',
            {"Idempotency-Key": "k"},
            422,
            "invalid",
        ),
        ("/v1/slots/s1/status", b"[]", {"Idempotency-Key": "k"}, 422, "invalid"),
        ("/v1/heartbeat", b" " * (1024 * 1024 + 1), {}, 413, "too_large"),
    ],
)
async def test_bad_requests(
    backend_url: str,
    auth: dict[str, str],
    path: str,
    content: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    """Bodies that are not JSON, lack fields or are too big get clear errors."""
    async with httpx.AsyncClient(base_url=backend_url) as http:
        answer = await http.post(path, content=content, headers={**auth, **headers})
    assert answer.status_code == status
    assert answer.json()["error"] == code


async def test_missing_idempotency_key(
    backend_url: str, calendar: LocalCalendar, auth: dict[str, str]
) -> None:
    """A status post without Idempotency-Key is a 422 and records nothing."""
    calendar.add("s1", "bob")
    async with httpx.AsyncClient(base_url=backend_url) as http:
        answer = await http.post("/v1/slots/s1/status", json=update().to_wire(), headers=auth)
    assert answer.status_code == 422
    assert "Idempotency-Key" in answer.json()["message"]
    assert calendar.receipts() == []


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}]
)
async def test_receipts_need_the_key(backend_url: str, headers: dict[str, str]) -> None:
    """GET /v1/receipts without the right bearer key is a 401."""
    async with httpx.AsyncClient(base_url=backend_url) as http:
        answer = await http.get("/v1/receipts", headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthorized"


# -- planned faults -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_fault_refused(faults: FaultPlan, make_client: Client, status: int) -> None:
    """A planned refusal is a BackendRefusedError even with the right key."""
    faults.refused(status=status)
    with pytest.raises(BackendRefusedError) as caught:
        await make_client().heartbeat(beat())
    assert caught.value.status_code == status


async def test_fault_server_error_with_retry_after(
    faults: FaultPlan, make_client: Client, calendar: LocalCalendar
) -> None:
    """A planned 503 with Retry-After is a passing fault with retry_after; then it heals."""
    calendar.add("s1", "bob")
    faults.server_error(503, retry_after=3, route="status")
    client = make_client()
    with pytest.raises(BackendUnavailableError) as caught:
        await client.send_status("s1", update(), "k1")
    assert (caught.value.status_code, caught.value.retry_after) == (503, 3.0)
    await client.send_status("s1", update(), "k1")
    assert len(calendar.receipts()) == 1


async def test_fault_too_many_with_an_http_date(faults: FaultPlan, make_client: Client) -> None:
    """A planned 429 with an HTTP-date Retry-After gives the seconds until that date."""
    when = datetime.now(UTC) + timedelta(seconds=60)
    faults.too_many(retry_after=format_datetime(when, usegmt=True))
    with pytest.raises(BackendUnavailableError) as caught:
        await make_client().heartbeat(beat())
    assert caught.value.status_code == 429
    assert caught.value.retry_after is not None
    assert 55 <= caught.value.retry_after <= 60


async def test_fault_hang_says_nothing(faults: FaultPlan, make_client: Client) -> None:
    """A planned hang gives no answer at all: only a deadline around the call ends it."""
    faults.hang(30)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await make_client().heartbeat(beat())


async def test_fault_short_hang_still_answers(
    faults: FaultPlan, make_client: Client, calendar: LocalCalendar
) -> None:
    """A hang shorter than the deadline is only a slow answer."""
    calendar.add("s1", "bob", fire_at=past())
    faults.hang(0.05)
    response, _ = await make_client().heartbeat(beat())
    assert [s.id for s in response.slots_to_fire] == ["s1"]


async def test_fault_slow_drip_is_read_whole(
    faults: FaultPlan, make_client: Client, calendar: LocalCalendar
) -> None:
    """A dripped answer is only slow: the client reads it whole (the scheduler bounds it)."""
    calendar.add("s1", "bob", fire_at=past())
    faults.slow_drip(0.2, chunks=4)
    response, _ = await make_client().heartbeat(beat())
    assert [s.id for s in response.slots_to_fire] == ["s1"]


async def test_fault_slow_drip_keeps_dripping(faults: FaultPlan, make_client: Client) -> None:
    """A long drip is still going when a deadline around the call cuts it off."""
    faults.slow_drip(10, chunks=100)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await make_client().heartbeat(beat())


async def test_fault_malformed_json_fails_the_beat(faults: FaultPlan, make_client: Client) -> None:
    """A 200 with broken JSON fails the beat with a BackendError."""
    faults.malformed_json()
    with pytest.raises(BackendError, match="not JSON"):
        await make_client().heartbeat(beat())


async def test_fault_malformed_conflict_is_a_rejection(
    faults: FaultPlan, make_client: Client, calendar: LocalCalendar
) -> None:
    """A 409 whose body is not JSON is a rejection, not a conflict."""
    calendar.add("s1", "bob")
    faults.malformed_json(status=409, route="status")
    with pytest.raises(BackendRejectedError) as caught:
        await make_client().send_status("s1", update(), "k1")
    assert caught.value.status_code == 409


async def test_fault_oversized_body_hits_the_cap(faults: FaultPlan, make_client: Client) -> None:
    """A streamed body without Content-Length past the cap fails the beat."""
    faults.oversized(4 * 1024 * 1024)
    with pytest.raises(BackendError, match="cap"):
        await make_client(max_response_bytes=64 * 1024).heartbeat(beat())


async def test_execute_then_timeout_retry_is_deduplicated(
    faults: FaultPlan, make_client: Client, calendar: LocalCalendar
) -> None:
    """The update applied before a timeout is not recorded again when retried with its key."""
    calendar.add("s1", "bob")
    faults.execute_then_timeout()
    client = make_client()
    with pytest.raises(TimeoutError):  # the deadline the scheduler would put around it
        async with asyncio.timeout(0.3):
            await client.send_status("s1", update(SlotState.completed), "evt-1")
    assert calendar.get("s1").status is CalendarStatus.completed  # it did happen
    await client.send_status("s1", update(SlotState.completed), "evt-1")
    assert [r.idempotency_key for r in calendar.receipts()] == ["evt-1"]
    assert faults.pending() == []


async def test_faults_are_per_route(
    faults: FaultPlan, make_client: Client, calendar: LocalCalendar
) -> None:
    """A fault planned for status posts leaves heartbeats alone."""
    calendar.add("s1", "bob")
    faults.server_error(route="status")
    client = make_client()
    await client.heartbeat(beat())
    with pytest.raises(BackendUnavailableError):
        await client.send_status("s1", update(), "k1")


async def test_serve_backend_serves_any_asgi_app() -> None:
    """serve_backend runs an arbitrary ASGI app and stops it on exit."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serve_backend(app) as url, httpx.AsyncClient() as http:  # type: ignore[arg-type]
        assert (await http.get(url)).status_code == 204
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(url)
