"""Hostile request bodies against a real scheduler: always a 4xx, never a 5xx, no row.

Oversized bodies (declared with ``Content-Length`` and sent chunked without one),
malformed JSON, NUL bytes raw and escaped, deeply nested JSON, wrong types and invalid
Unicode, on every POST route of a live agent, over SQLite and PostgreSQL: each answer is
4xx and the journal's row counts are unchanged. tests/control/test_body.py covers the size
rules over fake tools; this proves the real journal never sees such a body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from calsched.control import MAX_BODY, MAX_FIELD
from tests.security.rig import ControlRig, control_rig, token_of


def _chunks(total: int, size: int = 4096) -> Callable[[bytes], AsyncIterator[bytes]]:
    """A chunked body of ``total`` bytes of a JSON string, without a Content-Length."""

    async def gen(field: bytes) -> AsyncIterator[bytes]:
        yield b'{"' + field + b'": "'
        for _ in range(total // size):
            yield b"x" * size
        yield b'"}'

    return gen


def _bodies() -> Iterator[tuple[str, Any]]:
    """(name, content): bytes (``FIELD`` stands for the route's field), or a function of
    the field giving the bytes or an async iterator of chunks."""
    yield "declared oversize", b'{"FIELD": "' + b"x" * (MAX_BODY + 1) + b'"}'
    yield "chunked oversize", _chunks(MAX_BODY * 4)
    yield "chunked 1 MiB", _chunks(1 << 20)
    yield "not json", b"{summary: done"
    yield "truncated", b'{"FIELD": "do'
    yield "json array", b'["summary", "done"]'
    yield "json string", b'"done"'
    yield "json number", b"42"
    yield "json null", b"null"
    yield "raw NUL", b'{"FIELD": "a\x00b"}'
    yield "NUL only", b"\x00" * 64
    yield "escaped NUL", b'{"FIELD": "a\\u0000b"}'
    yield "only NUL", b'{"FIELD": "\\u0000"}'
    yield "NUL slot_id", b'{"slot_id": "s-alice\\u0000"}'
    yield "nested arrays", b"[" * 100_000 + b"]" * 100_000
    yield "nested objects", b'{"a":' * 20_000 + b"1" + b"}" * 20_000
    yield "nested in field", b'{"FIELD": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    yield "field number", b'{"FIELD": 5}'
    yield "field object", b'{"FIELD": {"$ne": null}}'
    yield "slot_id list", b'{"slot_id": ["s-alice"]}'
    yield "slot_id empty", b'{"slot_id": ""}'
    yield "field too long", b'{"FIELD": "' + b"y" * (MAX_FIELD + 1) + b'"}'
    yield "lone surrogate", b'{"FIELD": "\\ud800"}'
    yield "invalid utf-8", b'{"FIELD": "\xff\xfe"}'
    yield "duplicate keys", b'{"slot_id": "s-alice", "slot_id": ["x"]}'
    yield "huge number", b'{"FIELD": ' + b"9" * 5000 + b"}"
    yield "NaN", b'{"FIELD": NaN}'


BODIES = list(_bodies())
#: Each POST route and the text field it reads (unknown fields are ignored by design, so
#: a hostile value is put in the field the route really takes; resume reads only slot_id).
POSTS = {"/complete": b"summary", "/abort": b"reason", "/pause": b"reason", "/resume": b"slot_id"}


@pytest.fixture
async def rig(db_url: str) -> AsyncIterator[ControlRig]:
    """Three agents in progress behind the control API."""
    async with control_rig(db_url) as made:
        yield made


async def test_hostile_bodies_are_4xx_and_write_nothing(rig: ControlRig) -> None:
    """Every hostile body on every POST route: 4xx (never 5xx), no row, no slot moved."""
    before, states = rig.rows(), rig.states()
    headers = {"authorization": f"Bearer {token_of('alice')}"}
    tried = 0
    answers: dict[int, int] = {}
    for name, content in BODIES:
        for suffix, field in POSTS.items():
            body = content(field) if callable(content) else content.replace(b"FIELD", field)
            response = await rig.http.post(
                f"/v1/agents/alice/slot{suffix}", content=body, headers=headers
            )
            tried += 1
            answers[response.status_code] = answers.get(response.status_code, 0) + 1
            assert 400 <= response.status_code < 500, (name, suffix, response.text)
            assert response.json()["error"], (name, suffix)
            assert rig.rows() == before, (name, suffix)
            assert rig.states() == states, (name, suffix)
    print(f"\nhostile bodies tried {tried} ({len(BODIES)} kinds x {len(POSTS)} routes): {answers}")
    # The same route takes a sane body: the refusals were the bodies' doing.
    ok = await rig.http.post(
        "/v1/agents/alice/slot/pause", json={"reason": "fine"}, headers=headers
    )
    assert ok.status_code == 200
