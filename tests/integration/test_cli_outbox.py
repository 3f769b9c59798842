"""``calsched outbox retry|discard`` and ``status`` against a running daemon (a child
``calsched run`` on loopback): the writes go through its control API, as the operator,
and status names the dead-lettered slot."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from calsched.cli import app
from calsched.journal import Journal, TransitionRequest
from calsched.journal.dead_letters import DISCARD, RETRY, DeadLetters
from calsched.model import Actor, Slot, Trigger, parse
from tests.integration.conftest import child_env, free_port

runner = CliRunner()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[dict[str, str], int]]:
    """A daemon on a journal holding slot s-1 in progress with its one row dead."""
    port = free_port()
    env = child_env(
        tmp_path,
        CALSCHED_DATABASE_URL=f"sqlite:///{tmp_path / 'run.db'}",
        CALSCHED_IDENTIFIER="host-a",
        CALSCHED_CONTROL__SECRET_FILE=str(tmp_path / "control.secret"),
        CALSCHED_CONTROL__PORT=str(port),
    )
    journal = Journal.open(env["CALSCHED_DATABASE_URL"], "host-a", upgrade=True)
    try:
        slot = parse(Slot, {"id": "s-1", "agent_id": "bob"})
        journal.apply(TransitionRequest("s-1", Trigger.receive, Actor.backend, slot=slot))
        for trigger in (Trigger.dispatch, Trigger.woke):
            journal.apply(TransitionRequest("s-1", trigger, Actor.scheduler))
        (row,) = journal.outbox_rows(slot_id="s-1")
        journal.mark_dead(row.id, "HTTP 422: unknown slot")
    finally:
        journal.close()
    log = (tmp_path / "daemon.log").open("wb")
    child = subprocess.Popen([sys.executable, "-m", "calsched", "run"], env=env, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail((tmp_path / "daemon.log").read_text())
        yield env, row.id
    finally:
        child.terminate()
        child.wait(timeout=30)
        log.close()


def cli(env: dict[str, str], *args: str, code: int = 0) -> Result:
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result


def test_retry_and_discard_go_through_the_daemon(daemon: tuple[dict[str, str], int]) -> None:
    """status names the dead slot; retry and discard are answered by the daemon and
    recorded as the operator's; a second discard is refused by it (409 settled)."""
    env, row_id = daemon
    status = json.loads(cli(env, "status", "--json").stdout)
    assert status["outbox"]["dead_slots"] == ["s-1"]
    assert "dead-lettered: s-1" in cli(env, "status").stdout
    retried = json.loads(cli(env, "outbox", "retry", str(row_id), "--json").stdout)
    assert retried == {"retried": [row_id]}
    # The embedded calendar does not know s-1, so the retried row may die again:
    # discard it either way.
    out = cli(env, "outbox", "discard", str(row_id), "--reason", "not in the calendar")
    assert f"discarded outbox row {row_id} of slot s-1" in out.stdout
    again = cli(env, "outbox", "discard", str(row_id), "--reason", "again", code=1)
    assert "(settled)" in again.stderr
    journal = Journal.open(env["CALSCHED_DATABASE_URL"], "host-a")
    try:
        actions = DeadLetters(journal.engine, "host-a").actions()
    finally:
        journal.close()
    assert [(a.action, a.actor) for a in actions] == [
        (RETRY, Actor.operator),
        (DISCARD, Actor.operator),
    ]
    assert json.loads(cli(env, "status", "--json").stdout)["outbox"]["dead"] == 0
    # doctor sees the daemon on the port; the default console host passes.
    doctor = cli(env, "doctor").stdout
    assert "a calsched daemon answers /healthz" in doctor
    assert [line for line in doctor.splitlines() if line.startswith("FAIL")] == []
    assert "console: each wake is printed" in doctor
