"""HttpBackend: the protocol's requests, and every answer classified (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from calsched.backend.http import HttpBackend, parse_retry_after
from calsched.errors import (
    BackendConflictError,
    BackendError,
    BackendRefusedError,
    BackendRejectedError,
    BackendUnavailableError,
    ConfigError,
)
from calsched.model import HeartbeatRequest, SlotState, SlotUpdate

KEY = "sk-test-9f8e7d6c5b4a"
BASE = "http://backend.test/api"
Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


def beat() -> HeartbeatRequest:
    """A minimal heartbeat request."""
    return HeartbeatRequest(identifier="host-a", captured_at=datetime(2026, 11, 27, 22, tzinfo=UTC))


def completed(attempt: int = 1) -> SlotUpdate:
    """A ``completed`` status update."""
    return SlotUpdate(
        identifier="host-a",
        status=SlotState.completed,
        attempt=attempt,
        summary="done",
        occurred_at=datetime(2026, 11, 27, 22, 5, tzinfo=UTC),
    )


class Recorder:
    """A MockTransport handler that records requests and answers from a script."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
async def make_backend() -> AsyncIterator[Callable[..., HttpBackend]]:
    """Build HttpBackends on a MockTransport; all are closed after the test."""
    made: list[HttpBackend] = []

    def _make(handler: Handler, **kwargs: Any) -> HttpBackend:
        backend = HttpBackend(BASE, KEY, transport=httpx.MockTransport(handler), **kwargs)
        made.append(backend)
        return backend

    yield _make
    for backend in made:
        await backend.aclose()


def slots_body(*slots: dict[str, Any]) -> dict[str, Any]:
    """A heartbeat response body."""
    return {"slots_to_fire": list(slots), "restart_pending": False}


# -- requests as the protocol writes them ----------------------------------------------


async def test_heartbeat_posts_the_request_with_the_bearer_key(make_backend: Any) -> None:
    """The beat goes to {base}/v1/heartbeat with the key and the request's wire JSON."""
    rec = Recorder(httpx.Response(200, json=slots_body()))
    await make_backend(rec).heartbeat(beat())
    (sent,) = rec.requests
    assert sent.method == "POST"
    assert str(sent.url) == f"{BASE}/v1/heartbeat"
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert json.loads(sent.content) == beat().to_wire()


async def test_heartbeat_returns_the_slots_and_restart_flag(make_backend: Any) -> None:
    """A 200 answer is parsed into slots (with their fields) and restart_pending."""
    body = {
        "slots_to_fire": [
            {"id": "s-18", "agent_id": "bob", "title": "Daily report", "prompt_text": "go"}
        ],
        "restart_pending": True,
    }
    response, rejected = await make_backend(Recorder(httpx.Response(200, json=body))).heartbeat(
        beat()
    )
    assert [(s.id, s.agent_id, s.prompt_text) for s in response.slots_to_fire] == [
        ("s-18", "bob", "go")
    ]
    assert response.restart_pending is True
    assert rejected == []


async def test_one_bad_slot_is_rejected_and_the_others_kept(make_backend: Any) -> None:
    """A slot failing validation comes back as rejected; valid ones are still returned."""
    body = slots_body({"id": "ok-1", "agent_id": "a"}, {"id": "", "agent_id": "a"}, {"id": "ok-2"})
    response, rejected = await make_backend(Recorder(httpx.Response(200, json=body))).heartbeat(
        beat()
    )
    assert [s.id for s in response.slots_to_fire] == ["ok-1"]
    assert [(r.index, r.slot_id) for r in rejected] == [(1, ""), (2, "ok-2")]


async def test_status_posts_to_the_quoted_slot_path_with_the_key(make_backend: Any) -> None:
    """The slot id is URL-quoted; Idempotency-Key and the update's wire JSON are sent."""
    rec = Recorder(httpx.Response(204))
    await make_backend(rec).send_status("team/a b?", completed(), "key-1")
    (sent,) = rec.requests
    assert sent.url.raw_path == b"/api/v1/slots/team%2Fa%20b%3F/status"
    assert sent.headers["Idempotency-Key"] == "key-1"
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert json.loads(sent.content) == completed().to_wire()


async def test_the_same_key_is_sent_on_every_retry(make_backend: Any) -> None:
    """Retrying one update with its key sends the identical Idempotency-Key each time."""
    rec = Recorder(httpx.Response(503), httpx.Response(503), httpx.Response(200))
    backend = make_backend(rec)
    for _ in range(2):
        with pytest.raises(BackendUnavailableError):
            await backend.send_status("s1", completed(), "evt-42")
    await backend.send_status("s1", completed(), "evt-42")
    assert [r.headers["Idempotency-Key"] for r in rec.requests] == ["evt-42"] * 3


# -- the protocol table ---------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 202, 204])
async def test_status_acknowledged(make_backend: Any, status: int) -> None:
    """200, 202 and 204 acknowledge a status update."""
    await make_backend(Recorder(httpx.Response(status))).send_status("s1", completed(), "k")


async def test_conflict_carries_the_held_status_and_reason(make_backend: Any) -> None:
    """409 with a terminal status raises BackendConflictError with status and reason."""
    answer = httpx.Response(409, json={"status": "aborted", "reason": "timed out"})
    with pytest.raises(BackendConflictError) as caught:
        await make_backend(Recorder(answer)).send_status("s1", completed(), "k")
    assert (caught.value.status, caught.value.reason, caught.value.status_code) == (
        "aborted",
        "timed out",
        409,
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"status": "in_progress"}',
        b'["completed"]',
        b'{"reason": "x"}',
        b"[" * 100_000,  # too deep for Python's parser: still a rejection, not a crash
    ],
    ids=["empty", "not-json", "not-terminal", "a-list", "no-status", "too-deep"],
)
async def test_conflict_without_a_terminal_body_is_a_rejection(
    make_backend: Any, body: bytes
) -> None:
    """A 409 whose body is not {"status": completed|aborted} is a rejection."""
    with pytest.raises(BackendRejectedError) as caught:
        await make_backend(Recorder(httpx.Response(409, content=body))).send_status(
            "s1", completed(), "k"
        )
    assert caught.value.status_code == 409


@pytest.mark.parametrize("status", [400, 404, 422, 410])
@pytest.mark.parametrize("call", ["heartbeat", "status"])
async def test_rejections(make_backend: Any, status: int, call: str) -> None:
    """400, 404, 422 (and other 4xx) raise BackendRejectedError on both calls."""
    backend = make_backend(Recorder(httpx.Response(status, json={"error": "nope"})))
    with pytest.raises(BackendRejectedError) as caught:
        await _call(backend, call)
    assert caught.value.status_code == status
    assert "nope" in str(caught.value)


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("call", ["heartbeat", "status"])
async def test_refusals(make_backend: Any, status: int, call: str) -> None:
    """401 and 403 raise BackendRefusedError: the key is refused."""
    with pytest.raises(BackendRefusedError) as caught:
        await _call(make_backend(Recorder(httpx.Response(status))), call)
    assert caught.value.status_code == status


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
@pytest.mark.parametrize("call", ["heartbeat", "status"])
async def test_passing_faults(make_backend: Any, status: int, call: str) -> None:
    """408, 429 and 5xx raise BackendUnavailableError with the status code."""
    with pytest.raises(BackendUnavailableError) as caught:
        await _call(make_backend(Recorder(httpx.Response(status))), call)
    assert caught.value.status_code == status
    assert caught.value.retry_after is None


async def test_retry_after_in_seconds(make_backend: Any) -> None:
    """Retry-After given in seconds is passed on as retry_after."""
    answer = httpx.Response(429, headers={"Retry-After": "7"})
    with pytest.raises(BackendUnavailableError) as caught:
        await make_backend(Recorder(answer)).send_status("s1", completed(), "k")
    assert caught.value.retry_after == 7.0


async def test_retry_after_as_http_date(make_backend: Any) -> None:
    """Retry-After given as an HTTP-date becomes the seconds until that date."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    answer = httpx.Response(503, headers={"Retry-After": when})
    with pytest.raises(BackendUnavailableError) as caught:
        await make_backend(Recorder(answer)).heartbeat(beat())
    assert caught.value.retry_after is not None
    assert 115 <= caught.value.retry_after <= 120


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("2.5", 2.5),
        ("-3", 0.0),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: go now
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    """Retry-After parsing: seconds, dates, and unreadable values as None."""
    assert parse_retry_after(header) == expected


def test_parse_retry_after_against_a_given_now() -> None:
    """An HTTP-date is measured from the ``now`` given."""
    now = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)
    assert parse_retry_after("Fri, 27 Nov 2026 22:01:30 GMT", now=now) == 90.0


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadError("connection reset"),
        httpx.RemoteProtocolError("server disconnected"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
    ],
)
@pytest.mark.parametrize("call", ["heartbeat", "status"])
async def test_transport_errors_are_passing_faults(
    make_backend: Any, error: Exception, call: str
) -> None:
    """Connection errors and httpx timeouts become BackendUnavailableError, chained."""
    with pytest.raises(BackendUnavailableError) as caught:
        await _call(make_backend(Recorder(error)), call)
    assert caught.value.status_code is None
    assert caught.value.__cause__ is error


@pytest.mark.parametrize("status", [301, 302, 100])
async def test_unexpected_statuses_are_passing_faults(make_backend: Any, status: int) -> None:
    """A redirect (not followed) or other unexpected status is a passing fault."""
    with pytest.raises(BackendUnavailableError):
        await make_backend(Recorder(httpx.Response(status))).send_status("s1", completed(), "k")


# -- heartbeat bodies ------------------------------------------------------------------


@pytest.mark.parametrize("status", [201, 202, 204])
async def test_heartbeat_needs_exactly_200(make_backend: Any, status: int) -> None:
    """A heartbeat answered with a 2xx other than 200 fails the beat."""
    with pytest.raises(BackendError):
        await make_backend(Recorder(httpx.Response(status, json=slots_body()))).heartbeat(beat())


@pytest.mark.parametrize(
    "body",
    [b"<html>hello</html>", b'{"slots_to_fire": [', b"\xff\xfe", b""],
)
async def test_heartbeat_not_json_fails_the_beat(make_backend: Any, body: bytes) -> None:
    """A 200 whose body is not JSON raises BackendError (no subclass: not a table row)."""
    with pytest.raises(BackendError) as caught:
        await make_backend(Recorder(httpx.Response(200, content=body))).heartbeat(beat())
    assert type(caught.value) is BackendError
    assert "not JSON" in str(caught.value)


@pytest.mark.parametrize(
    "data",
    [[], "slots", {"slots_to_fire": {"id": "s1"}}, {"restart_pending": "yes"}],
)
async def test_heartbeat_bad_envelope_fails_the_beat(make_backend: Any, data: Any) -> None:
    """JSON that is not the heartbeat envelope fails the beat."""
    with pytest.raises(BackendError, match="not a heartbeat response"):
        await make_backend(Recorder(httpx.Response(200, json=data))).heartbeat(beat())


async def test_body_over_the_cap_fails_the_beat(make_backend: Any) -> None:
    """A body bigger than max_response_bytes fails the beat."""
    big = slots_body(*({"id": f"s{i}", "agent_id": "a"} for i in range(200)))
    backend = make_backend(Recorder(httpx.Response(200, json=big)), max_response_bytes=1024)
    with pytest.raises(BackendError, match="larger than the 1024-byte cap"):
        await backend.heartbeat(beat())


class Endless(httpx.AsyncByteStream):
    """A response body with no Content-Length that never ends; counts what was read."""

    def __init__(self, chunk: bytes = b" " * 1024, delay: float = 0.0) -> None:
        self.chunk = chunk
        self.delay = delay
        self.sent = 0
        self.closed = False
        self.dripping = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"slots_to_fire": [], "pad": "'
        while True:
            if self.delay:
                await asyncio.sleep(self.delay)
            self.sent += len(self.chunk)
            self.dripping.set()
            yield self.chunk

    async def aclose(self) -> None:
        self.closed = True


async def test_streamed_body_is_cut_at_the_cap(make_backend: Any) -> None:
    """A body without Content-Length is read only until it passes the cap."""
    stream = Endless()
    backend = make_backend(
        lambda _r: httpx.Response(200, stream=stream), max_response_bytes=16 * 1024
    )
    with pytest.raises(BackendError, match="cap"):
        await backend.heartbeat(beat())
    assert stream.sent <= 17 * 1024  # stopped at the first chunk past the cap


async def test_a_lying_content_length_does_not_lift_the_cap(make_backend: Any) -> None:
    """A small Content-Length on a big streamed body still hits the cap."""
    stream = Endless()
    backend = make_backend(
        lambda _r: httpx.Response(200, headers={"Content-Length": "10"}, stream=stream),
        max_response_bytes=8 * 1024,
    )
    with pytest.raises(BackendError, match="cap"):
        await backend.heartbeat(beat())


async def test_declared_length_over_the_cap_is_not_read(make_backend: Any) -> None:
    """A Content-Length over the cap fails the beat before the body is read."""
    stream = Endless()
    backend = make_backend(
        lambda _r: httpx.Response(200, headers={"Content-Length": "999999"}, stream=stream),
        max_response_bytes=1024,
    )
    with pytest.raises(BackendError, match="cap"):
        await backend.heartbeat(beat())
    assert stream.sent == 0


async def test_requests_carry_no_timeout_of_their_own(make_backend: Any) -> None:
    """The client sets no httpx timeout: the scheduler's backend_deadline_s is the only one."""
    recorder = Recorder(httpx.Response(200, json=slots_body()), httpx.Response(204))
    backend = make_backend(recorder)
    await backend.heartbeat(beat())
    await backend.send_status("s1", completed(), "k")
    unbounded = {"connect": None, "read": None, "write": None, "pool": None}
    assert [r.extensions["timeout"] for r in recorder.requests] == [unbounded, unbounded]


async def test_a_cancelled_dripping_body_is_closed(make_backend: Any) -> None:
    """Cut off from outside (the scheduler's deadline), a beat reading a dripping body lets
    the cancellation through, unclassified, and closes the stream."""
    stream = Endless(chunk=b" ", delay=0.01)
    backend = make_backend(lambda _r: httpx.Response(200, stream=stream))

    async def deadline_once_dripping(deadline: asyncio.Timeout) -> None:
        # The deadline falls only once the body is being read: a fixed 0.2 s could pass
        # before the first chunk on a loaded machine, and the test would prove nothing.
        await stream.dripping.wait()
        deadline.reschedule(asyncio.get_running_loop().time())

    async def beat_until_cut() -> None:
        async with asyncio.timeout(30) as deadline:
            cutter = asyncio.create_task(deadline_once_dripping(deadline))
            try:
                await backend.heartbeat(beat())
            finally:
                await cutter

    with pytest.raises(TimeoutError):
        await beat_until_cut()
    assert stream.sent > 0
    assert stream.closed


async def test_a_cancelled_status_post_is_not_a_backend_error(make_backend: Any) -> None:
    """A status post whose answer never comes is cancelled, not turned into a fault here:
    the outbox names it ``no answer within Ns``."""
    started = asyncio.Event()

    async def never(_request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    task = asyncio.create_task(make_backend(never).send_status("s1", completed(), "k"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- the key stays secret -----------------------------------------------------------------


async def test_key_is_not_in_repr(make_backend: Any) -> None:
    """repr() shows the URL, never the key (and no deadline: the scheduler owns it)."""
    backend = make_backend(Recorder(httpx.Response(200)))
    assert KEY not in repr(backend)
    assert "backend.test" in repr(backend)
    assert "deadline" not in repr(backend)


async def test_echoed_key_is_scrubbed_from_error_text(make_backend: Any) -> None:
    """A backend echoing the Authorization header does not put the key in our errors."""

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text=f"bad header: {request.headers['Authorization']}")

    with pytest.raises(BackendRefusedError) as caught:
        await make_backend(echo).heartbeat(beat())
    assert KEY not in str(caught.value)
    assert "***" in str(caught.value)


async def test_key_in_a_transport_error_is_not_chained(make_backend: Any) -> None:
    """If a foreign error's text holds the key, it is neither quoted nor chained."""
    with pytest.raises(BackendUnavailableError) as caught:
        await make_backend(Recorder(httpx.ConnectError(f"boom {KEY}"))).heartbeat(beat())
    assert KEY not in str(caught.value)
    assert caught.value.__cause__ is None


async def test_conflict_reason_echoing_the_key_is_scrubbed(make_backend: Any) -> None:
    """The conflict message is scrubbed too."""
    answer = httpx.Response(409, json={"status": "completed", "reason": f"by {KEY}"})
    with pytest.raises(BackendConflictError) as caught:
        await make_backend(Recorder(answer)).send_status("s1", completed(), "k")
    assert KEY not in str(caught.value)


def test_bad_key_error_does_not_show_it() -> None:
    """A key that cannot go in a header is refused without repeating it."""
    with pytest.raises(ConfigError) as caught:
        HttpBackend(BASE, "two words-secret")
    assert "two words-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("ftp://backend.test", KEY),
        ("backend.test", KEY),
        ("http://backend.test/?q=1", KEY),
        (BASE, ""),
    ],
)
def test_bad_configuration(url: str, key: str) -> None:
    """A non-http(s) URL, a URL with a query, or an empty key is a ConfigError."""
    with pytest.raises(ConfigError):
        HttpBackend(url, key)


async def test_credentials_in_the_url_are_masked() -> None:
    """A password in the base URL is masked in repr and base_url."""
    transport = httpx.MockTransport(Recorder(httpx.Response(200)))
    async with HttpBackend("http://user:hunter2@backend.test", KEY, transport=transport) as backend:
        shown = (repr(backend), backend.base_url)
    assert all("hunter2" not in text for text in shown)


async def test_closes_as_a_context_manager() -> None:
    """``async with`` closes the client; later calls fail rather than leak."""
    async with HttpBackend(
        BASE, KEY, transport=httpx.MockTransport(Recorder(httpx.Response(200, json={})))
    ) as backend:
        await backend.heartbeat(beat())
    with pytest.raises(RuntimeError):
        await backend.heartbeat(beat())


async def _call(backend: HttpBackend, call: str) -> None:
    if call == "heartbeat":
        await backend.heartbeat(beat())
    else:
        await backend.send_status("s1", completed(), "k")


async def test_a_heartbeat_answer_too_deep_to_parse_is_a_backend_error(make_backend: Any) -> None:
    """100,000 nested brackets are a BackendError naming the cause, not a RecursionError."""
    backend = make_backend(Recorder(httpx.Response(200, content=b"[" * 100_000)))
    with pytest.raises(BackendError, match=r"not JSON.*RecursionError"):
        await backend.heartbeat(beat())
