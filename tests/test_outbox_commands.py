"""calsched.commands.outbox: ``calsched outbox list|retry|discard`` in-process with
CliRunner, on a SQLite file with no daemon (the daemon path is in
tests/integration/test_cli_outbox.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from calsched.journal import Journal
from calsched.journal.dead_letters import DISCARD, RETRY, DeadLetters
from calsched.journal.lease import Lease, death_lock_for
from calsched.model import Actor, SlotState, SlotView
from tests.conftest import cli, isolate_cli_env

runner = CliRunner()


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An isolated configuration: a SQLite file, identifier host-a, no secret file."""
    isolate_cli_env(monkeypatch, tmp_path, "cli.db")
    return tmp_path


@pytest.fixture
def journal(env: Path, drive: Callable[..., SlotView]) -> Iterator[Journal]:
    """Slot a: its first row dead-lettered; slot b: one row pending."""
    opened = Journal.open(f"sqlite:///{env / 'cli.db'}", "host-a", upgrade=True)
    drive(opened, "a", SlotState.in_progress)
    drive(opened, "b", SlotState.in_progress, agent_id="agent-2")
    opened.mark_dead(opened.outbox_rows(slot_id="a")[0].id, "HTTP 422: unknown slot")
    yield opened
    opened.close()


def dead_id(journal: Journal) -> int:
    (row,), _ = DeadLetters(journal.engine, "host-a").undelivered(dead_only=True)
    return row.id


def test_list_shows_pending_and_dead_rows(journal: Journal) -> None:
    """A table by default; --dead --json only the dead; a bounded list says so."""
    table = cli("outbox", "list").stdout
    assert "HTTP 422: unknown slot" in table
    assert "dead" in table
    assert "pending" in table
    data = json.loads(cli("outbox", "list", "--dead", "--json").stdout)
    assert data["total"] == 1
    assert [(r["slot_id"], r["state"]) for r in data["rows"]] == [("a", "dead")]
    assert "showing 1 of 2" in cli("outbox", "list", "--limit", "1").stderr


def test_retry_without_a_daemon_writes_under_the_lease(journal: Journal) -> None:
    """No daemon: the row is revived in the journal, as the operator's action."""
    row_id = dead_id(journal)
    assert f"retried 1 row(s): {row_id}" in cli("outbox", "retry", str(row_id)).stdout
    assert journal.outbox_counts().dead == 0
    (action,) = DeadLetters(journal.engine, "host-a").actions()
    assert (action.action, action.actor, action.outbox_id) == (RETRY, Actor.operator, row_id)
    again = json.loads(cli("outbox", "retry", "--all-dead", "--json").stdout)
    assert again == {"retried": []}


def test_discard_without_a_daemon_is_journaled_as_the_operator(journal: Journal) -> None:
    """The reason is recorded with actor operator; the row no longer counts as dead."""
    row_id = dead_id(journal)
    out = cli("outbox", "discard", str(row_id), "--reason", "slot deleted").stdout
    assert f"discarded outbox row {row_id} of slot a" in out
    assert journal.outbox_counts().dead == 0
    (action,) = DeadLetters(journal.engine, "host-a").actions()
    assert (action.action, action.actor, action.reason) == (
        DISCARD,
        Actor.operator,
        "slot deleted",
    )
    line = cli("outbox", "discard", str(row_id), "--reason", "again", code=1).stderr
    assert line.strip() == f"error: outbox row {row_id} was already delivered or discarded"


def test_writes_refused_while_a_live_process_holds_the_lease(journal: Journal) -> None:
    """A daemon holds the identifier but its control API does not answer: one line."""
    lease = Lease(
        journal.engine,
        "host-a",
        ttl_s=60,
        lock=death_lock_for(journal.engine, "host-a"),
        host="web-1",
        pid=4242,
    )
    lease.acquire()
    try:
        lines = cli("outbox", "retry", "--all-dead", code=1).stderr.strip().splitlines()
    finally:
        lease.release()
    assert len(lines) == 1
    assert lines[0].startswith("error: identifier 'host-a' is held by host web-1 pid 4242")
    port = os.environ["CALSCHED_CONTROL__PORT"]  # the free port env() chose
    assert f"control API at http://127.0.0.1:{port} does not answer" in lines[0]
    assert journal.outbox_counts().dead == 1


def test_usage_errors(journal: Journal) -> None:
    """retry needs exactly one of ID or --all-dead; discard needs a reason."""
    assert "exactly one of ID or --all-dead" in cli("outbox", "retry", code=2).stderr
    assert "exactly one" in cli("outbox", "retry", "1", "--all-dead", code=2).stderr
    assert "--reason" in cli("outbox", "discard", "1", code=2).stderr
