"""The demo's pieces that need no subprocess: plan, config, agents, crash check, report.

The whole run (a real daemon, SIGKILL, restart) is tests/integration/test_demo_run.py.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import stamina
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from calsched.cli import app
from calsched.config import HostAdapter, load_config
from calsched.demo import DemoError, DemoOptions, demo_command
from calsched.demo.agents import SimulatedAgents, ToolGate, create_host_app
from calsched.demo.report import (
    DemoResult,
    DemoView,
    HistoryRow,
    Mark,
    compare_active,
    describe_active,
    history_table,
    outbox_tally,
    read_history,
    slots_ended,
    summary_line,
)
from calsched.demo.scenario import (
    DEMO_SLOTS,
    IDENTIFIER,
    AgentPlan,
    Behaviour,
    DemoSlot,
    child_environment,
    daemon_config,
    plan_behaviours,
)
from calsched.errors import CalschedError
from calsched.journal import Journal
from calsched.model import SlotState, SlotView

T0 = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_backoff() -> Iterator[None]:
    """stamina retries at once: a refused connection in these tests is not worth waiting on."""
    with stamina.set_testing(True, attempts=3):
        yield


# -- the plan ----------------------------------------------------------------------------


def test_plan_is_the_same_for_the_same_seed() -> None:
    """A seed fixes every agent's behaviour and delays; another seed changes them."""
    first = plan_behaviours(DEMO_SLOTS, 7, kill_after_s=5.5)
    assert first == plan_behaviours(DEMO_SLOTS, 7, kill_after_s=5.5)
    assert first != plan_behaviours(DEMO_SLOTS, 8, kill_after_s=5.5)
    assert sorted(first) == [s.slot_id for s in DEMO_SLOTS]


@given(seed=st.integers(min_value=0, max_value=2**32))
def test_every_behaviour_appears_and_the_long_slot_spans_the_kill(seed: int) -> None:
    """Whatever the seed: complete, pause-resume-complete and abort all occur, and the
    long slot is still paused two seconds after the planned kill."""
    plans = plan_behaviours(DEMO_SLOTS, seed, kill_after_s=5.5)
    assert {p.behaviour for p in plans.values()} == set(Behaviour)
    for s in DEMO_SLOTS:
        plan = plans[s.slot_id]
        assert plan.agent_id == s.agent_id
        assert 0 < plan.first_delay_s <= 1.5
        if s.long:
            assert plan.behaviour is Behaviour.pause_resume_complete
            assert s.fire_after_s + plan.first_delay_s + plan.pause_s >= 5.5 + 2.0 - 0.01
        if plan.behaviour is Behaviour.abort:
            assert plan.text.startswith("agent gave up: ")
        else:
            assert plan.text == f"done: {s.title.lower()}"


def test_a_missing_behaviour_is_forced_in_without_losing_another() -> None:
    """With three plain slots, each of the three behaviours gets one, for every seed tried."""
    three = [DemoSlot(f"x-{i}", "a", f"t{i}", float(i)) for i in range(3)]
    for seed in range(50):
        kinds = [p.behaviour for p in plan_behaviours(three, seed, kill_after_s=1.0).values()]
        assert sorted(kinds) == sorted(Behaviour)


def test_the_demo_script_fits_the_brief() -> None:
    """Nine slots, four agents, fire times staggered over about ten seconds, one long slot."""
    assert len(DEMO_SLOTS) == 9
    assert len({s.agent_id for s in DEMO_SLOTS}) == 4
    fires = [s.fire_after_s for s in DEMO_SLOTS]
    assert fires == sorted(fires)
    assert 8 <= fires[-1] - fires[0] <= 15
    assert sum(s.long for s in DEMO_SLOTS) == 1


# -- the daemon's config and environment --------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CALSCHED_* of the test runner's, and XDG dirs in the test's directory."""
    import os

    for key in [k for k in os.environ if k.startswith("CALSCHED_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


@pytest.mark.usefixtures("clean_env")
def test_daemon_config_is_a_valid_calsched_config(tmp_path: Path) -> None:
    """The TOML the demo writes loads as an embedded-calendar, webhook-host configuration."""
    path = tmp_path / "calsched.toml"
    secret = tmp_path / 'odd dir "quoted"' / "control.secret"
    path.write_text(
        daemon_config(
            database_url=f"sqlite:///{tmp_path / 'calsched.db'}",
            control_port=41234,
            secret_file=secret,
            wake_url="http://127.0.0.1:5000/wake",
            agents_url="http://127.0.0.1:5000/agents",
            heartbeat_s=0.5,
        )
    )
    cfg = load_config(path)
    assert cfg.backend_url is None
    assert cfg.identifier == IDENTIFIER
    assert cfg.control.host == "127.0.0.1"
    assert cfg.control.port == 41234
    assert cfg.control.secret_file == secret
    assert cfg.host.adapter is HostAdapter.webhook
    assert str(cfg.host.wake_url) == "http://127.0.0.1:5000/wake"
    assert cfg.scheduler.heartbeat_interval_s == 0.5
    assert cfg.database_url.endswith("calsched.db")


def test_child_environment_drops_calsched_variables_and_moves_xdg(tmp_path: Path) -> None:
    """The daemon sees no CALSCHED_* of the user's, and its XDG dirs are in the work dir."""
    env = child_environment(
        tmp_path,
        {"PATH": "/bin", "CALSCHED_BACKEND_URL": "http://prod", "calsched_x": "1", "HOME": "/h"},
    )
    assert "CALSCHED_BACKEND_URL" not in env
    assert "calsched_x" not in env
    assert env["PATH"] == "/bin"
    assert env["HOME"] == "/h"
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        assert Path(env[name]).is_relative_to(tmp_path)


# -- the crash check ---------------------------------------------------------------------


def test_active_slots_that_came_back_pass() -> None:
    """Same slots in the same states after the restart; a pending one may have moved on."""
    result = compare_active(
        {"s-04": "paused", "s-06": "in_progress", "s-07": "pending"},
        {"s-04": "paused", "s-06": "in_progress", "s-07": "in_progress", "s-08": "pending"},
    )
    assert result.ok
    assert result.missing == []


def test_a_lost_or_changed_slot_fails_the_check() -> None:
    """A slot missing after the restart, or a paused one now in progress, is reported."""
    result = compare_active(
        {"s-04": "paused", "s-06": "in_progress"}, {"s-04": "in_progress", "s-09": "pending"}
    )
    assert not result.ok
    assert result.missing == ["s-04", "s-06"]


def test_nothing_active_before_the_kill_proves_nothing() -> None:
    """An empty "before" is not a successful check: there was nothing to bring back."""
    assert not compare_active({}, {}).ok


def test_describe_active_names_slot_agent_and_state() -> None:
    """The before/after lines show each active slot with its agent and state, by slot id."""
    active = [
        {"slot": {"id": "s-06", "agent_id": "bob"}, "state": "in_progress"},
        {"slot": {"id": "s-04", "agent_id": "dave"}, "state": "paused"},
    ]
    assert describe_active(active) == "s-04 (dave) paused, s-06 (bob) in_progress"
    assert describe_active([]) == "(none)"


# -- the simulated host and its agents ------------------------------------------------------


class FakeControl:
    """The daemon's control API, recording calls; answers ``status`` for every call."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        self.calls.append((request.url.path, request.headers["authorization"], body))
        state = {"pause": "paused", "abort": "aborted", "complete": "completed"}.get(
            request.url.path.rsplit("/", 1)[-1], "in_progress"
        )
        if self.status != 200:
            return httpx.Response(self.status, json={"error": "x", "message": "no"})
        return httpx.Response(200, json={"state": state})


def _plan(behaviour: Behaviour, slot_id: str = "s-1", agent_id: str = "ann") -> AgentPlan:
    return AgentPlan(slot_id, agent_id, behaviour, 0.0, 0.0, 0.0, "the text")


def _wake(slot_id: str = "s-1", agent_id: str = "ann", attempt: int = 1) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "message": "go",
        "source": f"calendar:slot-{slot_id}",
        "slot_id": slot_id,
        "attempt": attempt,
    }


Harness = tuple[SimulatedAgents, httpx.AsyncClient, FakeControl, list[str]]


@pytest.fixture
async def make_host() -> AsyncIterator[Callable[..., Harness]]:
    """Build agents behind the webhook app, with a fake control API; closed after."""
    clients: list[httpx.AsyncClient] = []
    made: list[SimulatedAgents] = []

    def _make(plans: dict[str, AgentPlan], *, status: int = 200) -> Harness:
        control = FakeControl(status)
        said: list[str] = []
        to_control = httpx.AsyncClient(
            transport=httpx.MockTransport(control.handler), base_url="http://control"
        )
        agents = SimulatedAgents(
            plans,
            to_control,
            {"ann": "tok-ann", "ben": "tok-ben"},
            ToolGate(),
            lambda text, detail=False: said.append(text),
        )
        to_host = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_host_app(agents)), base_url="http://host"
        )
        clients.extend([to_control, to_host])
        made.append(agents)
        return agents, to_host, control, said

    yield _make
    for agents in made:
        await agents.aclose()
    for client in clients:
        await client.aclose()


async def test_a_wake_runs_the_agents_plan_through_the_control_api(
    make_host: Callable[..., Harness],
) -> None:
    """pause, resume, complete: in order, with the agent's own token, fenced by slot_id."""
    agents, host, control, _ = make_host({"s-1": _plan(Behaviour.pause_resume_complete)})
    response = await host.post("/wake", json=_wake())
    assert response.status_code == 202
    await agents.join()
    assert [(path.rsplit("/", 1)[-1], auth) for path, auth, _ in control.calls] == [
        ("pause", "Bearer tok-ann"),
        ("resume", "Bearer tok-ann"),
        ("complete", "Bearer tok-ann"),
    ]
    assert all(body["slot_id"] == "s-1" for _, _, body in control.calls)
    assert control.calls[0][0] == "/v1/agents/ann/slot/pause"
    assert control.calls[-1][2]["summary"] == "the text"
    assert agents.failures == []


async def test_an_abort_plan_sends_its_reason(make_host: Callable[..., Harness]) -> None:
    """An agent planned to abort makes one call, abort, with the planned reason."""
    agents, host, control, _ = make_host({"s-1": _plan(Behaviour.abort)})
    await host.post("/wake", json=_wake())
    await agents.join()
    assert [(p, b["reason"]) for p, _, b in control.calls] == [
        ("/v1/agents/ann/slot/abort", "the text")
    ]


async def test_a_repeated_wake_is_ignored(make_host: Callable[..., Harness]) -> None:
    """The same source and attempt again (a restarted daemon's re-wake) starts no agent;
    a new attempt does."""
    agents, host, control, said = make_host({"s-1": _plan(Behaviour.complete)})
    for attempt in (1, 1, 2):
        assert (await host.post("/wake", json=_wake(attempt=attempt))).status_code == 202
    await agents.join()
    assert agents.duplicates == 1
    assert len(control.calls) == 2
    assert any("ignored" in line for line in said)


async def test_a_wake_for_an_unplanned_slot_is_accepted_and_ignored(
    make_host: Callable[..., Harness],
) -> None:
    """A slot the demo did not plan gets a 2xx (the wake is not failed) and no tool call."""
    agents, host, control, said = make_host({})
    assert (await host.post("/wake", json=_wake("zz"))).status_code == 202
    await agents.join()
    assert control.calls == []
    assert "did not plan" in said[-1]


async def test_a_malformed_wake_is_a_400(make_host: Callable[..., Harness]) -> None:
    """Not JSON, or a body without slot_id, is refused with 400."""
    _, host, _, _ = make_host({})
    assert (await host.post("/wake", content=b"{nope")).status_code == 400
    assert (await host.post("/wake", json={"agent_id": "ann"})).status_code == 400


async def test_a_refused_tool_call_is_recorded_as_a_failure(
    make_host: Callable[..., Harness],
) -> None:
    """A non-200 answer stops that agent and is kept for the demo to report."""
    agents, host, _, _ = make_host({"s-1": _plan(Behaviour.complete)}, status=409)
    await host.post("/wake", json=_wake())
    await agents.join()
    assert len(agents.failures) == 1
    assert str(agents.failures[0]).startswith("ann's complete of s-1 failed: HTTP 409")


async def test_the_agent_list_says_who_is_busy(make_host: Callable[..., Harness]) -> None:
    """GET /agents lists every planned agent, busy while it works on a slot."""
    agents, host, _, _ = make_host(
        {"s-1": _plan(Behaviour.complete), "s-2": _plan(Behaviour.complete, "s-2", "ben")}
    )
    agents.working["ben"] = "s-2"
    listed = (await host.get("/agents")).json()["agents"]
    assert [(a["id"], a["status"]) for a in listed] == [("ann", "idle"), ("ben", "busy")]


async def test_the_gate_holds_calls_and_waits_for_those_in_flight() -> None:
    """close() waits for the call in flight; calls made while closed wait for open()."""
    gate = ToolGate()
    order: list[str] = []
    release = asyncio.Event()

    async def in_flight() -> None:
        async with gate.call():
            order.append("first in")
            await release.wait()
            order.append("first out")

    async def later() -> None:
        async with gate.call():
            order.append("second")

    first = asyncio.create_task(in_flight())
    await asyncio.sleep(0)
    closing = asyncio.create_task(gate.close())
    await asyncio.sleep(0)
    assert not closing.done()
    second = asyncio.create_task(later())
    release.set()
    await closing
    assert order == ["first in", "first out"]
    assert not gate.is_open
    gate.open()
    await asyncio.gather(first, second)
    assert order[-1] == "second"


# -- reading the journal, and the report ----------------------------------------------------


@pytest.fixture
def demo_journal(sqlite_url: str) -> Iterator[Journal]:
    """A migrated SQLite journal under the demo's identifier."""
    journal = Journal.open(sqlite_url, IDENTIFIER, upgrade=True)
    yield journal
    journal.close()


def test_history_and_counts_come_from_sql(
    demo_journal: Journal, drive: Callable[..., SlotView]
) -> None:
    """slot_timeline rows in seq order, the slots ended, and the outbox rows by fate."""
    drive(demo_journal, "s-01", SlotState.completed, agent_id="alice")
    drive(demo_journal, "s-02", SlotState.paused, agent_id="bob")
    rows = read_history(demo_journal.engine)
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)
    assert [(r.slot_id, r.kind) for r in rows][:4] == [
        ("s-01", "receive"),
        ("s-01", "dispatch"),
        ("s-01", "woke"),
        ("s-01", "complete"),
    ]
    assert rows[0].change == "- -> pending"
    assert read_history(demo_journal.engine, after_seq=rows[-2].seq) == rows[-1:]
    assert slots_ended(demo_journal.engine) == 1
    tally = outbox_tally(demo_journal.engine)
    # s-01: in_progress, completed; s-02: in_progress, paused. Nothing delivered yet.
    assert (tally.delivered, tally.waiting, tally.dead) == (0, 4, 0)


def _row(seq: int, seconds: float, *, t0: datetime = T0, **fields: Any) -> HistoryRow:
    values: dict[str, Any] = {
        "slot_id": "s-01",
        "attempt": 1,
        "agent_id": "alice",
        "kind": "woke",
        "actor": "scheduler",
        "state_from": "dispatching",
        "state_to": "in_progress",
        "summary": None,
        "reason": None,
    }
    values.update(fields)
    return HistoryRow(seq=seq, recorded_at=t0 + timedelta(seconds=seconds), **values)


def _render(renderable: Any) -> str:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(renderable)
    return out.getvalue()


def test_history_table_puts_the_kill_between_the_rows_it_split() -> None:
    """The SIGKILL and restart marks appear in time order among the journal rows."""
    rows = [
        _row(1, 1.0),
        _row(2, 5.0, kind="complete", state_from="in_progress", state_to="completed", summary="ok"),
    ]
    marks = [
        Mark(T0 + timedelta(seconds=3), "restart", "daemon restarted"),
        Mark(T0 + timedelta(seconds=2), "SIGKILL", "daemon killed"),
        Mark(T0 + timedelta(seconds=9), "SIGKILL", "late mark"),
    ]
    text = _render(history_table(rows, T0, marks))
    order = [text.index(s) for s in ("+1.00s", "daemon killed", "daemon restarted", "+5.00s")]
    assert order == sorted(order)
    assert text.index("late mark") > text.index("+5.00s")
    assert "in_progress -> completed" in text
    assert "ok" in text


def test_summary_line_counts_everything() -> None:
    """The last line: slots by outcome, receipts, restarts, slots restored, time."""
    result = DemoResult(
        slots=9,
        completed=7,
        aborted=2,
        receipts=24,
        restarts=1,
        restoration=compare_active({"a": "paused", "b": "paused"}, {"a": "paused"}),
        elapsed_s=14.44,
    )
    assert summary_line(result) == (
        "9 slots: 7 completed, 2 aborted; 24 backend receipts; 1 hard restart "
        "(1/2 active slots restored); 14.4s"
    )


def test_plain_view_prints_lines_in_time_order_without_details() -> None:
    """Without a live view: narration and journal rows come out sorted by time at each
    refresh; the agents' detail lines are left out."""
    out = io.StringIO()
    now = datetime.now(UTC)
    view = DemoView(Console(file=out, width=200), live=False, t0=now)
    with view:
        view.journal([_row(7, 100.0, t0=now, reason="why")])
        view.say("hello")
        view.say("a detail", detail=True)
        view.journal([_row(6, -1.0, t0=now)])
        assert out.getvalue() == ""
        view.refresh()
        view.say("at the end")
    lines = out.getvalue().splitlines()
    assert [line.strip().split("  ", 1)[1] for line in lines] == [
        "journal #6 s-01 (alice) woke: dispatching -> in_progress by scheduler",
        "hello",
        "journal #7 s-01 (alice) woke: dispatching -> in_progress by scheduler  why",
        "at the end",
    ]
    assert lines[2].startswith("+100.00s")


def test_live_view_renders_active_slots_and_recent_rows() -> None:
    """The live panel shows the daemon, the active slots and the latest journal rows."""
    view = DemoView(Console(file=io.StringIO(), width=120), live=True, t0=T0)
    view.daemon = "KILLED (SIGKILL)"
    view.active = [
        {
            "slot": {"id": "s-04", "agent_id": "dave"},
            "state": "paused",
            "attempt": 1,
            "last_change": "2026-11-27T22:00:04Z",
        }
    ]
    view.journal([_row(3, 1.0)])
    text = _render(view.render())
    assert "KILLED (SIGKILL)" in text
    assert "s-04" in text
    assert "paused" in text
    assert "+4.00s" in text
    assert "dispatching -> in_progress" in text


# -- the command -------------------------------------------------------------------------


def test_demo_is_a_calsched_command_with_its_options() -> None:
    """`calsched demo --help` lists --seed, --keep and --live/--no-live."""
    result = CliRunner().invoke(app, ["demo", "--help"])
    assert result.exit_code == 0
    for option in ("--seed", "--keep", "--no-live"):
        assert option in result.output


def test_demo_command_builds_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command passes its flags to run_demo as DemoOptions."""
    seen: list[DemoOptions] = []
    monkeypatch.setattr("calsched.demo.run.run_demo", lambda options: seen.append(options))
    demo_command(seed=3, keep=True, live=False)
    assert seen == [DemoOptions(seed=3, keep=True, live=False)]


def test_a_demo_failure_is_a_calsched_error_the_cli_prints_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DemoError is a CalschedError: `calsched demo` ends with one error line, status 1."""

    def fail(options: DemoOptions) -> None:
        raise DemoError("the daemon exited by itself with status 1: boom")

    monkeypatch.setattr("calsched.demo.run.run_demo", fail)
    assert issubclass(DemoError, CalschedError)
    result = CliRunner().invoke(app, ["demo", "--no-live"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: the daemon exited by itself with status 1: boom"
    ]
