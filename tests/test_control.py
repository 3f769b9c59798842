"""Tests for calsched.control: the local control API over an in-process ASGI transport."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
from collections.abc import AsyncIterator, MutableMapping
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette

from calsched.control import ControlServer, create_control_app, serve_control
from calsched.errors import (
    ConfigError,
    InvalidInputError,
    InvalidTransitionError,
    JournalError,
    JournalUnavailableError,
    NoActiveSlotError,
    StaleSlotError,
)
from calsched.journal.idempotency import Remembered
from calsched.metrics import CONTENT_TYPE, Metrics
from calsched.model import Actor, Slot, SlotState, SlotView, utcnow
from calsched.status import SchedulerStatus, SlotEntry
from calsched.tokens import admin_token, agent_token
from calsched.tracing import OtelTracing

SECRET = b"control-test-secret-0123456789ab"
ADMIN = admin_token(SECRET)
ALICE = agent_token(SECRET, "alice")
BOB = agent_token(SECRET, "bob")
T0 = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)


def _view(slot_id: str, agent_id: str, state: SlotState) -> SlotView:
    return SlotView(
        identifier="host-a",
        slot_id=slot_id,
        agent_id=agent_id,
        state=state,
        attempt=1,
        slot=Slot(id=slot_id, agent_id=agent_id, title="Daily report"),
        received_at=T0,
        started_at=T0,
        updated_at=T0,
        resolved_at=None,
        summary=None,
        reason=None,
        last_seq=1,
    )


class FakeTools:
    """SlotTools over a dict agent -> current slot, raising the real errors."""

    def __init__(self) -> None:
        self.slots: dict[str, SlotView] = {}
        self.calls: list[tuple[str, str, str | None, str | None]] = []
        self.fail_with: Exception | None = None
        #: The actor and key of every tool call, and the answers kept under keys.
        self.actors: list[Actor] = []
        self.kept: dict[tuple[str, str], Remembered] = {}

    def _keep(self, agent_id: str, opts: dict[str, Any], view: SlotView) -> SlotView:
        """Record the actor; keep the answer under the call's key, as the scheduler does."""
        self.actors.append(opts.get("actor", Actor.agent))
        key = opts.get("key")
        if key is not None:
            body = SlotEntry.from_view(view).to_wire()
            self.kept[(agent_id, key.key)] = Remembered(key.fingerprint, 200, body, utcnow())
        return view

    async def recall(self, agent_id: str, key: str) -> Remembered | None:
        self.calls.append(("recall", agent_id, key, None))
        return self.kept.get((agent_id, key))

    def _current(self, agent_id: str, slot_id: str | None) -> SlotView:
        if self.fail_with is not None:
            raise self.fail_with
        view = self.slots.get(agent_id)
        if view is None:
            if slot_id is not None:
                raise StaleSlotError(agent_id, slot_id, None)
            raise NoActiveSlotError(agent_id)
        if slot_id is not None and slot_id != view.slot_id:
            raise StaleSlotError(agent_id, slot_id, view.slot_id)
        return view

    def _move(
        self, agent_id: str, slot_id: str | None, trigger: str, sources: set[SlotState], **kw: Any
    ) -> SlotView:
        view = self._current(agent_id, slot_id)
        if view.state not in sources:
            raise InvalidTransitionError(view.slot_id, view.state.value, trigger)
        new = dataclasses.replace(view, **kw)
        if new.terminal:
            del self.slots[agent_id]
        else:
            self.slots[agent_id] = new
        return new

    async def current_slot(self, agent_id: str) -> SlotView:
        self.calls.append(("current_slot", agent_id, None, None))
        return self._current(agent_id, None)

    async def complete(
        self, agent_id: str, summary: str | None = None, *, slot_id: str | None = None, **kw: Any
    ) -> SlotView:
        self.calls.append(("complete", agent_id, summary, slot_id))
        live = {SlotState.in_progress, SlotState.paused}
        view = self._move(
            agent_id, slot_id, "complete", live, state=SlotState.completed, summary=summary
        )
        return self._keep(agent_id, kw, view)

    async def abort(
        self, agent_id: str, reason: str | None = None, *, slot_id: str | None = None, **kw: Any
    ) -> SlotView:
        self.calls.append(("abort", agent_id, reason, slot_id))
        live = {SlotState.dispatching, SlotState.in_progress, SlotState.paused}
        view = self._move(agent_id, slot_id, "abort", live, state=SlotState.aborted, reason=reason)
        return self._keep(agent_id, kw, view)

    async def pause(
        self, agent_id: str, reason: str | None = None, *, slot_id: str | None = None, **kw: Any
    ) -> SlotView:
        self.calls.append(("pause", agent_id, reason, slot_id))
        live = {SlotState.in_progress}
        view = self._move(agent_id, slot_id, "pause", live, state=SlotState.paused, reason=reason)
        return self._keep(agent_id, kw, view)

    async def resume(self, agent_id: str, *, slot_id: str | None = None, **kw: Any) -> SlotView:
        self.calls.append(("resume", agent_id, None, slot_id))
        view = self._move(
            agent_id, slot_id, "resume", {SlotState.paused}, state=SlotState.in_progress
        )
        return self._keep(agent_id, kw, view)

    def status(self) -> SchedulerStatus:
        self.calls.append(("status", "", None, None))
        return SchedulerStatus(identifier="host-a", heartbeat_every_s=30)


@pytest.fixture
def tools() -> FakeTools:
    fake = FakeTools()
    fake.slots["alice"] = _view("s-1", "alice", SlotState.in_progress)
    fake.slots["bob"] = _view("s-2", "bob", SlotState.in_progress)
    return fake


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def client(tools: FakeTools, metrics: Metrics) -> AsyncIterator[httpx.AsyncClient]:
    app = create_control_app(tools, secret=SECRET, metrics=metrics)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        yield http


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the auth matrix --------------------------------------------------------------------

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


async def test_healthz_needs_no_token(client: httpx.AsyncClient) -> None:
    """/healthz answers {"ok": true} without a token."""
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


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


# -- answers ------------------------------------------------------------------------------


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


async def test_empty_body_counts_as_empty_object(
    client: httpx.AsyncClient, tools: FakeTools
) -> None:
    """A POST without a body is taken as {} (curl -X POST .../complete works)."""
    response = await client.post("/v1/agents/alice/slot/complete", headers=auth(ALICE))
    assert response.status_code == 200
    assert tools.calls == [("complete", "alice", None, None)]


async def test_unknown_fields_are_ignored(client: httpx.AsyncClient, tools: FakeTools) -> None:
    """Receivers ignore unknown fields (protocol)."""
    response = await client.post(
        "/v1/agents/alice/slot/pause", headers=auth(ALICE), json={"reason": "r", "extra": [1]}
    )
    assert response.status_code == 200
    assert tools.calls == [("pause", "alice", "r", None)]


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


# -- error codes --------------------------------------------------------------------------


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
    "content",
    [b"{not json", b"\xff\xfe\x00", b"[" * 100_000 + b"]" * 100_000, b"[1, 2]", b'"text"', b"3"],
    ids=["broken", "not utf", "deep", "array", "string", "number"],
)
async def test_non_object_body_is_400(
    client: httpx.AsyncClient, tools: FakeTools, content: bytes
) -> None:
    """A body that is not JSON, or not a JSON object, is 400 bad_request."""
    tools.calls.clear()
    app = create_control_app(tools, secret=SECRET, max_body=300_000)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        response = await http.post(
            "/v1/agents/alice/slot/complete", headers=auth(ALICE), content=content
        )
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert tools.calls == []


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        ("complete", {"summary": 5}, "summary"),
        ("complete", {"summary": ["a"]}, "summary"),
        ("abort", {"reason": {"a": 1}}, "reason"),
        ("pause", {"reason": True}, "reason"),
        ("resume", {"slot_id": 7}, "slot_id"),
        ("complete", {"slot_id": ""}, "slot_id"),
        ("complete", {"slot_id": "s" * 257}, "slot_id"),
    ],
)
async def test_wrong_field_types_are_422(
    client: httpx.AsyncClient, tools: FakeTools, action: str, body: dict[str, Any], field: str
) -> None:
    """Fields of the wrong type or size are 422 invalid, naming the field."""
    response = await client.post(f"/v1/agents/alice/slot/{action}", headers=auth(ALICE), json=body)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid"
    assert field in response.json()["message"]
    assert tools.calls == []


@pytest.mark.parametrize(("action", "field"), [("complete", "summary"), ("abort", "reason")])
async def test_text_at_the_limit_passes_one_byte_over_fails(
    client: httpx.AsyncClient, tools: FakeTools, action: str, field: str
) -> None:
    """summary/reason may be 8 KiB of UTF-8; one byte more is 422 invalid."""
    path = f"/v1/agents/alice/slot/{action}"
    over = await client.post(path, headers=auth(ALICE), json={field: "x" * (8 * 1024 + 1)})
    assert over.status_code == 422
    assert over.json()["error"] == "invalid"
    assert field in over.json()["message"]
    assert tools.calls == []
    ok = await client.post(path, headers=auth(ALICE), json={field: "x" * (8 * 1024)})
    assert ok.status_code == 200


async def test_text_limit_counts_utf8_bytes(client: httpx.AsyncClient) -> None:
    """The limit counts bytes, not characters: 4097 two-byte characters are over 8 KiB."""
    response = await client.post(
        "/v1/agents/alice/slot/complete", headers=auth(ALICE), json={"summary": "é" * 4097}
    )
    assert response.status_code == 422


async def test_lone_surrogate_is_422(client: httpx.AsyncClient) -> None:
    """A summary with a lone surrogate escape is 422 invalid, not a crash later."""
    response = await client.post(
        "/v1/agents/alice/slot/complete",
        headers={**auth(ALICE), "Content-Type": "application/json"},
        content=b'{"summary": "\\ud800"}',
    )
    assert response.status_code == 422
    assert "Unicode" in response.json()["message"]


@pytest.mark.parametrize("field", ["summary", "reason"])
async def test_nul_in_text_is_422(client: httpx.AsyncClient, tools: FakeTools, field: str) -> None:
    """A summary or reason holding NUL is 422 invalid before the tools run: PostgreSQL
    text cannot store it, so the commit would otherwise fail as a 500."""
    route = "complete" if field == "summary" else "abort"
    response = await client.post(
        f"/v1/agents/alice/slot/{route}",
        headers={**auth(ALICE), "Content-Type": "application/json"},
        content=b'{"%s": "a\\u0000b"}' % field.encode(),
    )
    assert response.status_code == 422
    assert "NUL" in response.json()["message"]
    assert tools.calls == []


async def test_large_body_is_413(client: httpx.AsyncClient, tools: FakeTools) -> None:
    """A 65 KiB body is 413 too_large."""
    body = {"summary": "x" * (65 * 1024)}
    response = await client.post("/v1/agents/alice/slot/complete", headers=auth(ALICE), json=body)
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
    assert tools.calls == []


async def test_large_body_with_lying_content_length_is_413(
    client: httpx.AsyncClient, tools: FakeTools
) -> None:
    """A small Content-Length does not hide a 65 KiB body: the stream is counted."""
    content = json.dumps({"summary": "x" * (65 * 1024)}).encode()
    response = await client.post(
        "/v1/agents/alice/slot/complete",
        headers={**auth(ALICE), "Content-Length": "20"},
        content=content,
    )
    assert response.status_code == 413
    assert tools.calls == []


async def test_large_chunked_body_is_413(client: httpx.AsyncClient, tools: FakeTools) -> None:
    """A chunked body without Content-Length is cut off once past the limit."""
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 1
            yield b"x" * 1024

    response = await client.post(
        "/v1/agents/alice/slot/complete", headers=auth(ALICE), content=chunks()
    )
    assert response.status_code == 413
    assert tools.calls == []
    assert sent < 100  # reading stopped soon after the limit


async def test_honest_large_content_length_is_413_without_reading(
    client: httpx.AsyncClient,
) -> None:
    """A declared Content-Length over the limit is refused up front."""
    response = await client.post(
        "/v1/agents/alice/slot/complete",
        headers={**auth(ALICE), "Content-Length": str(10**9)},
        content=b"{}",
    )
    assert response.status_code == 413


async def test_overlong_agent_id_from_admin_is_422(client: httpx.AsyncClient) -> None:
    """An agent id longer than the protocol allows is 422 invalid."""
    response = await client.get(f"/v1/agents/{'a' * 257}/slot", headers=auth(ADMIN))
    assert response.status_code == 422


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


# -- the Host check -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8765",
        "127.0.0.1.evil.example",
        "localhost.evil.example:80",
        "127.0.0.1:notaport",
        "user@127.0.0.1",
        "[::2]:8765",
        "",
    ],
)
@pytest.mark.parametrize("path", ["/healthz", "/v1/status", "/v1/agents/alice/slot", "/nowhere"])
async def test_foreign_host_header_is_refused(
    client: httpx.AsyncClient, tools: FakeTools, host: str, path: str
) -> None:
    """Any Host but a loopback name we serve is 403 forbidden_host, on every route."""
    response = await client.get(path, headers={"Host": host, **auth(ADMIN)})
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden_host"
    assert tools.calls == []


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.1:8765", "localhost:8765", "LOCALHOST", "[::1]:8765", "[::1]"]
)
async def test_loopback_host_headers_pass(client: httpx.AsyncClient, host: str) -> None:
    """The loopback names pass the Host check, with or without a port, in any case."""
    response = await client.get("/healthz", headers={"Host": host})
    assert response.status_code == 200


async def _raw_get(app: Starlette, headers: list[tuple[bytes, bytes]]) -> int:
    """GET /healthz straight through ASGI with exactly these headers; the status."""
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8765),
    }
    await app(scope, receive, send)
    status: int = sent[0]["status"]
    return status


async def test_missing_or_doubled_host_header_is_refused(tools: FakeTools) -> None:
    """A request with no Host header, or two, is refused (raw ASGI: httpx always sends one)."""
    app = create_control_app(tools, secret=SECRET)
    assert await _raw_get(app, [(b"host", b"127.0.0.1")]) == 200
    assert await _raw_get(app, []) == 403
    assert await _raw_get(app, [(b"host", b"127.0.0.1"), (b"host", b"evil.example")]) == 403


async def test_allowed_hosts_can_be_configured(tools: FakeTools) -> None:
    """allowed_hosts replaces the loopback defaults."""
    app = create_control_app(tools, secret=SECRET, allowed_hosts=["calsched.internal"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://calsched.internal") as http:
        assert (await http.get("/healthz")).status_code == 200
        refused = await http.get("/healthz", headers={"Host": "127.0.0.1"})
    assert refused.status_code == 403


# -- construction and serving -------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"secret": b"short"},
        {"secret": SECRET, "allowed_hosts": []},
        {"secret": SECRET, "allowed_hosts": "localhost"},
        {"secret": SECRET, "max_body": 0},
    ],
    ids=["short secret", "no hosts", "hosts as string", "zero body"],
)
def test_unusable_settings_are_config_errors(tools: FakeTools, kwargs: dict[str, Any]) -> None:
    """create_control_app refuses settings it cannot serve with."""
    with pytest.raises(ConfigError):
        create_control_app(tools, **kwargs)


def test_serve_control_configures_a_loopback_server(tools: FakeTools) -> None:
    """serve_control returns an unstarted server on 127.0.0.1:8765 by default."""
    server = serve_control(create_control_app(tools, secret=SECRET))
    assert isinstance(server, ControlServer)
    assert (server.config.host, server.config.port) == ("127.0.0.1", 8765)
    assert server.config.proxy_headers is False
    other = serve_control(create_control_app(tools, secret=SECRET), host="::1", port=9000)
    assert (other.config.host, other.config.port) == ("::1", 9000)


def test_control_server_leaves_signals_alone(tools: FakeTools) -> None:
    """ControlServer installs no SIGTERM/SIGINT handlers: the daemon owns shutdown."""
    server = serve_control(create_control_app(tools, secret=SECRET))
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with server.capture_signals():
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


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


# -- Idempotency-Key, the operator, the agent's status ------------------------------------


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


async def test_admin_calls_act_as_operator(client: httpx.AsyncClient, tools: FakeTools) -> None:
    """The admin token's tool calls carry actor operator; an agent token's, agent."""
    await client.post("/v1/agents/alice/slot/pause", json={}, headers=auth(ADMIN))
    await client.post("/v1/agents/bob/slot/pause", json={}, headers=auth(BOB))
    assert tools.actors == [Actor.operator, Actor.agent]


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


def parse_slot(slot_id: str, agent_id: str) -> Slot:
    """A slot as a backend lists it."""
    from calsched.model import parse

    return parse(Slot, {"id": slot_id, "agent_id": agent_id, "title": "t"})


async def test_traced_calls_are_server_spans() -> None:
    """With tracing on, a call is a server span named by its route; a traceparent makes it
    the caller's child, none starts a trace; 4xx is no error, 5xx is."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tools = FakeTools()
    tools.slots["bob"] = _view("s-2", "bob", SlotState.in_progress)
    app = create_control_app(tools, secret=SECRET, tracing=OtelTracing(provider))
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        await client.get("/v1/agents/bob/slot", headers={**auth(BOB), "traceparent": caller})
        await client.get("/v1/agents/alice/slot", headers=auth(BOB))
        tools.fail_with = RuntimeError("boom")
        await client.get("/v1/agents/bob/slot", headers=auth(BOB))
    continued, refused, failed = exporter.get_finished_spans()
    assert continued.name == "GET /v1/agents/{agent_id:path}/slot"
    assert continued.kind is SpanKind.SERVER
    assert continued.parent is not None
    assert (continued.parent.trace_id, continued.parent.span_id) == (
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
    )
    assert continued.attributes is not None
    assert continued.attributes["http.response.status_code"] == 200
    assert refused.parent is None
    assert refused.attributes is not None
    assert refused.attributes["http.response.status_code"] == 403
    assert refused.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "HTTP 500"


def test_tracing_off_adds_no_middleware(tools: FakeTools) -> None:
    """Off, the app has no trace layer at all (not even a pass-through)."""
    off = create_control_app(tools, secret=SECRET)
    on = create_control_app(tools, secret=SECRET, tracing=OtelTracing(TracerProvider()))
    assert len(on.user_middleware) == len(off.user_middleware) + 1


# -- the operator's outbox routes ----------------------------------------------------------


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


# -- readiness --------------------------------------------------------------------------


def _ready_app(tools: FakeTools, *checks: tuple[str, bool, str]) -> httpx.AsyncClient:
    from calsched.status import Readiness, ReadinessCheck

    async def readiness() -> Readiness:
        return Readiness.of({n: ReadinessCheck(ok=ok, detail=d) for n, ok, d in checks})

    app = create_control_app(tools, secret=SECRET, readiness=readiness)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


async def test_readyz_ready_is_200_naming_each_check(tools: FakeTools) -> None:
    """/readyz needs no token; ready, it is 200 with every check by name."""
    async with _ready_app(tools, ("journal", True, "ok"), ("backend", True, "beat 1.0s ago")) as h:
        response = await h.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "ready": True,
        "checks": {
            "journal": {"ok": True, "detail": "ok"},
            "backend": {"ok": True, "detail": "beat 1.0s ago"},
        },
        "failing": [],
    }
    assert tools.calls == []


async def test_readyz_not_ready_is_503_naming_the_failing_check(tools: FakeTools) -> None:
    checks = [("journal", True, "ok"), ("lease", False, "lost: x"), ("backend", False, "none")]
    async with _ready_app(tools, *checks) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    body = response.json()
    assert body["error"] == "not_ready"
    assert body["message"] == "lease: lost: x; backend: none"
    assert body["ready"] is False
    assert body["failing"] == ["lease", "backend"]
    assert body["checks"]["journal"] == {"ok": True, "detail": "ok"}


async def test_readyz_without_a_probe_is_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_readyz_keeps_the_host_check(tools: FakeTools) -> None:
    async with _ready_app(tools, ("journal", True, "ok")) as http:
        response = await http.get("/readyz", headers={"Host": "evil.example"})
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden_host"


async def test_readyz_over_a_real_scheduler(db_url: str) -> None:
    """Both databases: not ready before the first heartbeat, ready after it."""
    from calsched.journal import Journal
    from calsched.scheduler import Scheduler
    from calsched.settings import SchedulerSettings
    from calsched.testing import InMemoryBackend, InMemoryHost

    journal = Journal.open(db_url, "host-a", upgrade=True)
    settings = SchedulerSettings(identifier="host-a")
    sched = Scheduler(settings, journal, InMemoryBackend(), InMemoryHost())
    try:
        await sched.recover()
        app = create_control_app(sched, secret=SECRET, readiness=sched.readiness)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            before = await http.get("/readyz")
            await sched.heartbeat_once()
            after = await http.get("/readyz")
        assert before.status_code == 503
        assert before.json()["failing"] == ["backend"]
        assert after.status_code == 200, after.text
        assert set(after.json()["checks"]) == {"journal", "backend"}
    finally:
        await sched.stop()
        journal.close()
