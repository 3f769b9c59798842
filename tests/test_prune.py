"""``calsched journal prune``: the export required, --no-export loud, --dry-run changing
nothing, --json's summary, --vacuum, and the refusal while a daemon holds the lease."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from calsched.journal import Journal
from calsched.journal.lease import Lease, death_lock_for
from calsched.model import SlotState, SlotView
from tests.conftest import cli, isolate_cli_env, table_snapshot

runner = CliRunner()


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An isolated configuration: a SQLite file, identifier host-a, dirs in tmp_path."""
    return isolate_cli_env(monkeypatch, tmp_path, "cli.db")


@pytest.fixture
def filled(env: Path, drive: Callable[..., SlotView]) -> Iterator[Journal]:
    """s1 completed and s3 aborted (their updates delivered), s2 in progress."""
    journal = Journal.open(f"sqlite:///{env / 'cli.db'}", "host-a", upgrade=True)
    drive(journal, "s1", SlotState.completed, agent_id="agent-1")
    drive(journal, "s2", SlotState.in_progress, agent_id="agent-2")
    drive(journal, "s3", SlotState.aborted, agent_id="agent-1")
    for row in journal.outbox_rows():
        if row.slot_id != "s2":
            journal.mark_delivered(row.id)
    yield journal
    journal.close()


def test_prune_exports_then_deletes_and_verify_passes(filled: Journal, env: Path) -> None:
    """The ended slots go to the export; the live one stays; verify passes; --json."""
    export = env / "old.jsonl.gz"
    result = cli("journal", "prune", "--before", "+1h", "--export", str(export), "--json")
    summary = json.loads(result.stdout)
    assert summary["slots_pruned"] == 2
    assert summary["events_removed"] == summary["events"] == 6
    assert summary["kept_not_ended"] == 1
    assert summary["export"]["path"] == str(export)
    assert summary["export"]["bytes"] == export.stat().st_size
    assert export.stat().st_mode & 0o777 == 0o600  # the journal's content: its owner's alone
    assert summary["checkpoints"] == 2
    with gzip.open(export, "rt") as lines:
        assert {json.loads(line)["slot_id"] for line in lines} == {"s1", "s3"}
    assert [v.slot_id for v in filled.history()] == ["s2"]
    assert "ok:" in cli("journal", "verify").stdout
    assert "run with --vacuum" in result.stderr  # SQLite: the space comes back by VACUUM


def test_prune_needs_an_export_or_says_it_has_none(filled: Journal, env: Path) -> None:
    """No --export: refused; --no-export: a WARNING on stderr; an existing file: refused."""
    refused = cli("journal", "prune", "--before", "+1h", code=1)
    assert "--export FILE is required" in refused.stderr
    (env / "there.gz").write_bytes(b"")
    exists = cli("journal", "prune", "--before", "+1h", "--export", str(env / "there.gz"), code=1)
    assert "already exists" in exists.stderr
    done = cli("journal", "prune", "--before", "+1h", "--no-export", "--vacuum")
    assert done.stderr.startswith("WARNING: --no-export: the 6 event(s) of 2 slot(s) are deleted")
    assert "not exported" in done.stdout
    assert "VACUUM" not in done.stderr  # it ran
    assert "ok:" in cli("journal", "verify").stdout


def test_dry_run_changes_nothing(filled: Journal) -> None:
    """--dry-run counts and writes nothing, and needs no export."""
    before = table_snapshot(filled)
    result = cli("journal", "prune", "--before", "+1h", "--dry-run")
    assert result.stdout.startswith("would prune 2 slot(s) ended before ")
    assert "6 event(s)" in result.stdout
    assert table_snapshot(filled) == before


def test_prune_is_refused_while_a_daemon_holds_the_identifier(filled: Journal, env: Path) -> None:
    """A live holder of the lease: refused with one line naming it, nothing deleted."""
    lease = Lease(
        filled.engine,
        "host-a",
        ttl_s=60,
        lock=death_lock_for(filled.engine, "host-a"),
        host="web-1",
        pid=4242,
    )
    lease.acquire()
    try:
        before = table_snapshot(filled)
        result = cli("journal", "prune", "--before", "+1h", "--export", str(env / "x.gz"), code=1)
        assert "is held by host web-1 pid 4242" in result.stderr
        assert "stop the daemon first" in result.stderr
        assert table_snapshot(filled) == before
        assert not (env / "x.gz").exists()
    finally:
        lease.release()
