"""The MCP server of one agent's tools: schemas, tool errors a model can act on, retries.

An in-process SDK client talks to :func:`build_server`; its :class:`ControlClient` reaches
the real control app (over :class:`httpx.ASGITransport`) in front of the fake tools of
``tests/control``, so every answer is the protocol's own.
"""

from __future__ import annotations

import httpx
import pytest
from mcp import Client

from calsched.control import create_control_app
from calsched.mcp import ControlClient, build_server, claimed_agent, env_trace
from calsched.model import SlotState
from calsched.tokens import admin_token, agent_token
from tests.control.fakes import ALICE, BOB, SECRET, FakeTools, _view

TOOLS = {
    "calendar_status",
    "calendar_slot",
    "calendar_complete",
    "calendar_abort",
    "calendar_pause",
    "calendar_resume",
}


class Flaky(httpx.AsyncBaseTransport):
    """Passes requests to ``inner``; loses the answer of the first ``lose`` POSTs (the
    request reached the app, the client sees a timeout) and records every key sent."""

    def __init__(self, inner: httpx.AsyncBaseTransport, lose: int = 0) -> None:
        self.inner = inner
        self.lose = lose
        self.down = False
        self.keys: list[str | None] = []
        #: The traceparent header of every request that reached the app.
        self.traces: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("refused", request=request)
        self.traces.append(request.headers.get("traceparent"))
        if request.method == "POST":
            self.keys.append(request.headers.get("idempotency-key"))
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and self.lose > 0:
            self.lose -= 1
            raise httpx.ReadTimeout("lost", request=request)
        return response


@pytest.fixture
def tools() -> FakeTools:
    fake = FakeTools()
    fake.slots["bob"] = _view("s-2", "bob", SlotState.in_progress)
    return fake


@pytest.fixture
def flaky(tools: FakeTools) -> Flaky:
    app = create_control_app(tools, secret=SECRET)
    return Flaky(httpx.ASGITransport(app=app))


def client_of(flaky: Flaky, token: str = BOB, trace: dict[str, str] | None = None) -> Client:
    control = ControlClient(
        "http://127.0.0.1",
        "bob",
        token,
        transport=flaky,
        attempts=3,
        backoff_s=(0.0,),
        trace=trace or {},
    )
    return Client(build_server(control))


def text_of(result: object) -> str:
    content = getattr(result, "content", [])
    return " ".join(getattr(c, "text", "") for c in content)


async def test_tools_are_listed_with_schemas_and_descriptions(flaky: Flaky) -> None:
    """Six tools, each with a description, an input schema and a structured output."""
    async with client_of(flaky) as client:
        listed = (await client.list_tools()).tools
    assert {t.name for t in listed} == TOOLS
    by_name = {t.name: t for t in listed}
    for tool in listed:
        assert tool.description
        assert tool.output_schema
    assert by_name["calendar_complete"].input_schema["required"] == ["summary"]
    assert "slot_id" in by_name["calendar_resume"].input_schema["properties"]
    assert by_name["calendar_slot"].annotations is not None
    assert by_name["calendar_slot"].annotations.read_only_hint is True


async def test_tools_answer_structured_slots(flaky: Flaky, tools: FakeTools) -> None:
    """A tool call answers the slot after the change, as structured content."""
    async with client_of(flaky) as client:
        slot = await client.call_tool("calendar_slot", {})
        paused = await client.call_tool("calendar_pause", {"reason": "lunch", "slot_id": "s-2"})
        status = await client.call_tool("calendar_status", {})
    assert slot.structured_content is not None
    assert slot.structured_content["slot"]["id"] == "s-2"
    assert paused.structured_content is not None
    assert (paused.structured_content["state"], paused.structured_content["reason"]) == (
        "paused",
        "lunch",
    )
    assert ("pause", "bob", "lunch", "s-2") in tools.calls
    assert status.structured_content is not None
    assert status.structured_content["agent_id"] == "bob"


@pytest.mark.parametrize(
    ("setup", "tool", "args", "expected"),
    [
        ("none", "calendar_complete", {"summary": "x"}, "You have no active slot"),
        ("none", "calendar_slot", {}, "You have no active slot"),
        ("in_progress", "calendar_pause", {"reason": "x", "slot_id": "s-9"}, "no longer yours"),
        ("paused", "calendar_pause", {"reason": "x"}, "already paused"),
        ("in_progress", "calendar_resume", {}, "not paused"),
    ],
)
async def test_refusals_are_tool_errors_a_model_can_act_on(
    flaky: Flaky, tools: FakeTools, setup: str, tool: str, args: dict[str, str], expected: str
) -> None:
    """Each refusal is an is_error result whose text says what to do; the server lives on."""
    if setup == "none":
        del tools.slots["bob"]
    elif setup == "paused":
        tools.slots["bob"] = _view("s-2", "bob", SlotState.paused)
    async with client_of(flaky) as client:
        result = await client.call_tool(tool, args)
        assert result.is_error
        assert expected in text_of(result)
        assert not (await client.call_tool("calendar_status", {})).is_error


async def test_another_agents_token_is_a_tool_error(flaky: Flaky) -> None:
    """Bob's server with alice's token: the daemon's 403 becomes a tool error."""
    async with client_of(flaky, ALICE) as client:
        result = await client.call_tool("calendar_slot", {})
    assert result.is_error
    assert "another agent" in text_of(result)


async def test_a_lost_answer_is_retried_under_the_same_key(flaky: Flaky, tools: FakeTools) -> None:
    """The first POST's answer is lost: the retry reuses its key; the tool ran once."""
    flaky.lose = 1
    async with client_of(flaky) as client:
        result = await client.call_tool("calendar_complete", {"summary": "done"})
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert result.structured_content["state"] == "completed"
    assert len(flaky.keys) == 2
    assert flaky.keys[0] is not None
    assert flaky.keys[0] == flaky.keys[1]
    assert [c[0] for c in tools.calls].count("complete") == 1


async def test_unknown_outcome_keeps_the_key_for_the_same_call(
    flaky: Flaky, tools: FakeTools
) -> None:
    """No answer at all: a tool error saying a repeat is safe; the repeat sends the same
    key (the first call did complete, so the daemon answers as it did); a new call, a new key."""
    flaky.lose = 3
    async with client_of(flaky) as client:
        lost = await client.call_tool("calendar_complete", {"summary": "done"})
        assert lost.is_error
        assert "outcome is unknown" in text_of(lost)
        again = await client.call_tool("calendar_complete", {"summary": "done"})
        assert not again.is_error, text_of(again)
        assert again.structured_content is not None
        assert again.structured_content["state"] == "completed"
        other = await client.call_tool("calendar_complete", {"summary": "other"})
    assert len(set(flaky.keys[:4])) == 1
    assert flaky.keys[4] != flaky.keys[0]
    assert len(tools.kept) == 1  # one change made, under the first key
    assert other.is_error  # no active slot left: the first call's complete stands


async def test_daemon_down_is_a_tool_error(flaky: Flaky) -> None:
    """No daemon: a read says to try again, the server does not crash."""
    flaky.down = True
    async with client_of(flaky) as client:
        result = await client.call_tool("calendar_slot", {})
    assert result.is_error
    assert "did not answer" in text_of(result)


def test_claimed_agent_reads_the_id_of_an_agent_token() -> None:
    """The id inside an agent token; None for the admin token and junk."""
    assert claimed_agent(agent_token(SECRET, "bob/2")) == "bob/2"
    assert claimed_agent(admin_token(SECRET)) is None
    assert claimed_agent("agent.%%%.x") is None
    assert claimed_agent("nonsense") is None


CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HOST = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_a_traceparent_in_meta_goes_on_to_the_daemon(flaky: Flaky) -> None:
    """A tool call's _meta traceparent is the control API call's; it beats the env one."""
    async with client_of(flaky, trace={"traceparent": HOST}) as client:
        result = await client.call_tool(
            "calendar_pause", {"reason": "lunch"}, meta={"traceparent": CALLER}
        )
    assert not result.is_error
    assert flaky.traces == [CALLER]


async def test_without_meta_the_env_trace_goes_on(flaky: Flaky) -> None:
    """A call whose _meta has no trace context sends TRACEPARENT's; else it sends none."""
    async with client_of(flaky, trace=env_trace({"TRACEPARENT": HOST})) as client:
        await client.call_tool("calendar_slot", {})
    async with client_of(flaky) as client:
        await client.call_tool("calendar_slot", {}, meta={"traceparent": "not-a-traceparent"})
    assert flaky.traces == [HOST, None]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"TRACEPARENT": HOST, "TRACESTATE": "v=1"}, {"traceparent": HOST, "tracestate": "v=1"}),
        ({"TRACEPARENT": f" {HOST}\n"}, {"traceparent": HOST}),
        ({"TRACEPARENT": "00-zz-yy-01"}, {}),
        ({"TRACEPARENT": "00-" + "0" * 32 + "-b7ad6b7169203331-01"}, {}),
        ({"TRACESTATE": "v=1"}, {}),
        ({}, {}),
    ],
    ids=["with-state", "stripped", "malformed", "zero-trace", "state-alone", "unset"],
)
def test_env_trace_takes_only_a_valid_traceparent(
    environ: dict[str, str], expected: dict[str, str]
) -> None:
    """TRACEPARENT is checked (W3C format, non-zero ids); anything else gives nothing."""
    assert env_trace(environ) == expected
