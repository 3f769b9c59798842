"""calsched.backend.faults: the fault plan's bookkeeping and the middleware applying it.

The middleware is driven here as a plain ASGI app with scripted ``receive``/``send``, so
every fault is checked without a server or a clock; the same faults against the real
reference backend on a loopback port are in tests/integration/test_reference_backend.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send

from calsched.backend.faults import Fault, FaultKind, FaultMiddleware, FaultPlan

BODY = b'{"slots_to_fire": [], "restart_pending": false}'

# -- FaultPlan ----------------------------------------------------------------------------


def test_faults_apply_in_order_per_route() -> None:
    """take() returns the first fault for the route (or "any"), consuming it."""
    plan = FaultPlan().too_many(2, route="status").server_error(502).hang(1.5, route="heartbeat")
    first = plan.take("heartbeat")
    assert first == Fault(FaultKind.server_error, "any", status=502)
    assert plan.take("heartbeat") == Fault(FaultKind.hang, "heartbeat", seconds=1.5)
    assert plan.take("heartbeat") is None
    assert plan.take("status") == Fault(FaultKind.too_many, "status", status=429, retry_after="2")
    assert plan.take("status") is None
    assert [f.kind for f in plan.applied] == [
        FaultKind.server_error,
        FaultKind.hang,
        FaultKind.too_many,
    ]


def test_faults_repeat_times() -> None:
    """A fault with times=n applies to n requests; pending() lists what is left."""
    plan = FaultPlan().refused(status=403, times=2).malformed_json(route="heartbeat")
    assert [f.kind for f in plan.pending()] == [
        FaultKind.refused,
        FaultKind.refused,
        FaultKind.malformed_json,
    ]
    assert [plan.take("status"), plan.take("status")] == [
        Fault(FaultKind.refused, "any", status=403)
    ] * 2
    assert plan.take("status") is None
    plan.clear()
    assert plan.pending() == []
    assert plan.take("heartbeat") is None


def test_fault_parameters() -> None:
    """Each builder stores its parameters; Retry-After is kept as header text."""
    date = "Fri, 27 Nov 2026 22:01:30 GMT"
    plan = (
        FaultPlan()
        .server_error(500, retry_after=1.5)
        .too_many(retry_after=date)
        .slow_drip(2.0, 4)
        .execute_then_timeout()
        .oversized(1000)
    )
    faults = plan.pending()
    assert faults[0].retry_after == "1.5"
    assert faults[1].retry_after == date
    assert (faults[2].seconds, faults[2].chunks) == (2.0, 4)
    assert (faults[3].kind, faults[3].route) == (FaultKind.execute_then_timeout, "status")
    assert (faults[4].nbytes, faults[4].route) == (1000, "heartbeat")


@pytest.mark.parametrize("bad", [{"times": 0}, {"chunks": 0}])
def test_fault_plan_refuses_nonsense(bad: dict[str, int]) -> None:
    """times and chunks must be at least 1."""
    with pytest.raises(ValueError, match="at least 1"):
        FaultPlan().slow_drip(1.0, **bad)


# -- FaultMiddleware ----------------------------------------------------------------------


class App:
    """An ASGI app that reads the whole body, then answers ``BODY`` with a Content-Length."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.calls.append(body)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": BODY})


def scope(path: str = "/v1/heartbeat", method: str = "POST") -> Scope:
    """An HTTP request scope."""
    return {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}


def client(messages: Iterable[Message]) -> Receive:
    """A ``receive`` that hands out ``messages``, then waits for ever (a patient client)."""
    queue = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    return receive


REQUEST: Message = {"type": "http.request", "body": b"{}", "more_body": False}
GONE: Message = {"type": "http.disconnect"}


async def call(
    plan: FaultPlan, app: App, receive: Receive, request: Scope | None = None
) -> list[Message]:
    """Serve one request through the middleware; the messages it sent."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await FaultMiddleware(app, plan)(request or scope(), receive, send)
    return sent


def body_of(sent: list[Message]) -> bytes:
    """The response body, all pieces joined."""
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def header(sent: list[Message], name: bytes) -> bytes | None:
    """A response header, or None."""
    return dict(sent[0]["headers"]).get(name)


async def test_without_a_fault_the_request_passes_untouched() -> None:
    """No fault planned: the app answers, and nothing is taken from the plan."""
    plan, app = FaultPlan(), App()
    sent = await call(plan, app, client([REQUEST]))
    assert (sent[0]["status"], body_of(sent), app.calls) == (200, BODY, [b"{}"])
    assert plan.applied == []


@pytest.mark.parametrize(
    ("path", "method"),
    [("/v1/receipts", "GET"), ("/v1/heartbeat", "GET"), ("/v1/other", "POST")],
)
async def test_only_beats_and_status_posts_take_faults(path: str, method: str) -> None:
    """Receipts, other methods and other paths neither take nor consume a fault."""
    plan, app = FaultPlan().server_error(), App()
    sent = await call(plan, app, client([REQUEST]), scope(path, method))
    assert sent[0]["status"] == 200
    assert len(plan.pending()) == 1


async def test_faults_follow_the_route() -> None:
    """A status fault is taken by a status post, not by a heartbeat."""
    plan, app = FaultPlan().server_error(502, route="status"), App()
    beat = await call(plan, app, client([REQUEST]))
    post = await call(plan, app, client([REQUEST]), scope("/v1/slots/a%2Fb/status"))
    assert (beat[0]["status"], post[0]["status"]) == (200, 502)


@pytest.mark.parametrize(
    ("planned", "status", "body"),
    [
        (FaultPlan().refused(status=403), 403, b'"unauthorized"'),
        (FaultPlan().server_error(503, retry_after=2), 503, b'"unavailable"'),
        (FaultPlan().too_many(), 429, b'"unavailable"'),
        (FaultPlan().malformed_json(status=409), 409, b'{"slots_to_fire": [{"id": "s-'),
    ],
    ids=["refused", "server_error", "too_many", "malformed_json"],
)
async def test_answers_instead_of_the_app(planned: FaultPlan, status: int, body: bytes) -> None:
    """These faults answer alone: the app never sees the request."""
    app = App()
    sent = await call(planned, app, client([REQUEST]))
    assert sent[0]["status"] == status
    assert body in body_of(sent)
    assert app.calls == []


async def test_retry_after_is_sent() -> None:
    """A planned Retry-After goes out as the header."""
    sent = await call(FaultPlan().too_many(retry_after=7), App(), client([REQUEST]))
    assert header(sent, b"retry-after") == b"7"


async def test_oversized_streams_valid_json_of_the_size() -> None:
    """oversized streams nbytes of valid JSON without a Content-Length."""
    app = App()
    sent = await call(FaultPlan().oversized(200_000), app, client([REQUEST]))
    body = body_of(sent)
    assert len(body) == 200_000
    assert json.loads(body)["slots_to_fire"] == []
    assert header(sent, b"content-length") is None
    assert app.calls == []


async def test_hang_drops_a_request_whose_client_left() -> None:
    """A client that hangs up during a hang is not served: the app never runs."""
    app, plan = App(), FaultPlan().hang(30)
    sent = await call(plan, app, client([REQUEST, GONE]))
    assert (sent, app.calls, plan.pending()) == ([], [], [])


async def test_hang_then_serves_a_patient_client_the_whole_body() -> None:
    """After the hang the app gets the body read meanwhile, every piece in order."""
    app = App()
    pieces = [
        {"type": "http.request", "body": b'{"a"', "more_body": True},
        {"type": "http.request", "body": b": 1}", "more_body": False},
    ]
    plan = FaultPlan().hang(0)
    sent = await call(plan, app, client(pieces))
    assert (sent[0]["status"], app.calls) == (200, [b'{"a": 1}'])
    assert [f.kind for f in plan.applied] == [FaultKind.hang]


async def test_slow_drip_sends_the_real_answer_in_pieces() -> None:
    """slow_drip sends the app's answer in the planned pieces, without Content-Length."""
    app = App()
    sent = await call(FaultPlan().slow_drip(0, chunks=4), app, client([REQUEST]))
    pieces = [m["body"] for m in sent[1:] if m["body"]]
    assert (len(pieces), b"".join(pieces)) == (4, BODY)
    assert header(sent, b"content-length") is None
    assert sent[-1].get("more_body", False) is False
    assert app.calls == [b"{}"]


async def test_execute_then_timeout_does_the_work_and_withholds_the_answer() -> None:
    """The app handles the request; a client that gives up gets nothing."""
    app, plan = App(), FaultPlan().execute_then_timeout()
    sent = await call(plan, app, client([REQUEST, GONE]), scope("/v1/slots/s1/status"))
    assert (sent, app.calls) == ([], [b"{}"])
    assert plan.pending() == []


async def test_execute_then_timeout_answers_a_client_that_waits_longer() -> None:
    """A client still there after hang_seconds gets the app's answer as it was."""
    plan = FaultPlan().execute_then_timeout(hang_seconds=0)
    sent = await call(plan, App(), client([REQUEST]), scope("/v1/slots/s1/status"))
    assert (sent[0]["status"], body_of(sent)) == (200, BODY)
    assert plan.pending() == []


def test_the_backend_carries_the_middleware_only_with_a_plan(tmp_path: Any) -> None:
    """create_backend_app adds FaultMiddleware when given faults, and nothing otherwise."""
    from calsched.backend.calendar import LocalCalendar
    from calsched.backend.server import create_backend_app
    from calsched.journal import Journal

    journal = Journal.open(f"sqlite:///{tmp_path / 'f.db'}", "host-a", upgrade=True)
    try:
        calendar = LocalCalendar(journal.engine)
        plain = create_backend_app(calendar, "k")
        faulty = create_backend_app(calendar, "k", faults=FaultPlan())
    finally:
        journal.close()
    assert isinstance(plain, Starlette)
    assert plain.user_middleware == []
    assert [m.cls for m in faulty.user_middleware] == [FaultMiddleware]


async def test_too_deep_json_answers_nested_arrays_without_the_app() -> None:
    """too_deep_json: ``depth`` nested arrays, valid JSON, with the planned status."""
    plan, app = FaultPlan().too_deep_json(50, status=503), App()
    sent = await call(plan, app, client([REQUEST]))
    assert (sent[0]["status"], body_of(sent), app.calls) == (503, b"[" * 50 + b"]" * 50, [])
    assert json.loads(body_of(sent)) is not None


def test_too_deep_json_refuses_a_depth_below_one() -> None:
    """A depth of 0 is no nesting at all."""
    with pytest.raises(ValueError, match="at least 1"):
        FaultPlan().too_deep_json(0)


async def test_truncated_body_does_the_work_and_sends_half_the_answer() -> None:
    """truncated_body: the app handles it; the real Content-Length goes out, half the
    body, and the answer is never finished (the server then drops the connection)."""
    plan, app = FaultPlan().truncated_body(), App()
    sent = await call(plan, app, client([REQUEST]))
    assert app.calls == [b"{}"]
    assert header(sent, b"content-length") == b"%d" % len(BODY)
    assert body_of(sent) == BODY[: len(BODY) // 2]
    assert all(m.get("more_body") for m in sent if m["type"] == "http.response.body")


async def test_connection_reset_stops_after_the_headers_without_the_app() -> None:
    """connection_reset: a 200's headers announcing a body, then nothing, the app unused."""
    plan, app = FaultPlan().connection_reset(), App()
    sent = await call(plan, app, client([REQUEST]))
    assert app.calls == []
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert (sent[0]["status"], header(sent, b"content-length")) == (200, b"64")
