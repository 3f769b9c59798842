"""``calsched state --at``: the table (80 columns), JSON, the empty moment and bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from calsched.journal import Journal, TransitionRequest
from calsched.model import Trigger
from tests.conftest import FakeClock, cli, isolate_cli_env

runner = CliRunner()


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An isolated configuration: a SQLite file, identifier host-a."""
    isolate_cli_env(monkeypatch, tmp_path, "cli.db")
    return tmp_path


@pytest.fixture
def history(env: Path, request_factory: Callable[..., TransitionRequest]) -> FakeClock:
    """At 22:00:00 s1 (alice) and s2 (bob) arrive; at 22:00:10 s1 is woken; at 22:01:00
    s1 pauses and s2 is aborted; at 22:02:00 s1 completes."""
    clock = FakeClock()
    journal = Journal.open(f"sqlite:///{env / 'cli.db'}", "host-a", upgrade=True, clock=clock)

    def fire(slot_id: str, trigger: Trigger, agent: str) -> None:
        journal.apply(request_factory(slot_id, trigger, agent_id=agent))

    try:
        fire("s1", Trigger.receive, "alice")
        fire("s2", Trigger.receive, "bob")
        clock.advance(10)
        fire("s1", Trigger.dispatch, "alice")
        fire("s1", Trigger.woke, "alice")
        clock.advance(50)
        fire("s1", Trigger.pause, "alice")
        fire("s2", Trigger.abort, "bob")
        clock.advance(60)
        fire("s1", Trigger.complete, "alice")
    finally:
        journal.close()
    return clock


def test_json_shows_each_live_slot_with_its_state_attempt_and_since(history: FakeClock) -> None:
    """Ten seconds in: s1 in progress since its wake, s2 still pending since it arrived."""
    out = json.loads(cli("state", "--at", "2026-11-27T22:00:30Z", "--json").stdout)
    assert out["at"] == "2026-11-27T22:00:30Z"
    assert out["identifier"] == "host-a"
    assert [(s["slot_id"], s["state"], s["attempt"], s["since"]) for s in out["slots"]] == [
        ("s1", "in_progress", 1, "2026-11-27T22:00:10Z"),
        ("s2", "pending", 1, "2026-11-27T22:00:00Z"),
    ]


def test_a_moment_takes_in_the_events_recorded_at_it(history: FakeClock) -> None:
    """At 22:01:00 s1 has just paused and s2 has just ended; with --agent, alice only."""
    out = json.loads(cli("state", "--at", "2026-11-27T23:01:00+01:00", "--json").stdout)
    assert [(s["slot_id"], s["state"]) for s in out["slots"]] == [("s1", "paused")]
    only_bob = json.loads(cli("state", "--at", "2026-11-27T22:00:30", "-a", "bob", "--json").stdout)
    assert [s["slot_id"] for s in only_bob["slots"]] == ["s2"]


def test_table_fits_80_columns(history: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The table names the moment and shows each slot on one line within 80 columns."""
    monkeypatch.setenv("COLUMNS", "80")
    out = cli("state", "--at", "2026-11-27T22:00:30Z").stdout
    assert "active at 2026-11-27T22:00:30Z" in out
    assert all(len(line) <= 80 for line in out.splitlines())
    row = next(line for line in out.splitlines() if line.split()[:1] == ["s1"])
    assert "in_progress" in row
    assert "2026-11-27T22:00:10Z" in row


def test_nothing_active_says_so(history: FakeClock) -> None:
    """Before the first event and after the last slot ended, nothing was active."""
    for moment in ("2026-11-27T21:00:00Z", "2026-11-27T22:02:00Z"):
        result = cli("state", "--at", moment)
        assert f"no slot was active at {moment}" in result.stderr


def test_a_bad_time_is_one_error_line(history: FakeClock) -> None:
    """An unreadable --at is an input error: one ``error:`` line, status 1."""
    result = cli("state", "--at", "yesterday-ish", code=1)
    assert result.stderr.startswith("error: ")
    assert "--at" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_at_is_required(history: FakeClock) -> None:
    """Without --at it is a usage error (status 2)."""
    assert "--at" in cli("state", code=2).stderr
