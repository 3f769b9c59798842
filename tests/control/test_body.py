"""Tests for calsched.control.body: a POST's body capped, JSON, typed and bounded."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from calsched.control import create_control_app
from tests.control.fakes import ALICE, SECRET, FakeTools, auth


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
