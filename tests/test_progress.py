"""Progress bars (calsched.commands.progress): on stderr, only for a terminal, never
with --json, and gone once the work is done."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from calsched.cli import app
from calsched.commands.progress import progress_bar
from calsched.journal import Journal
from calsched.model import SlotState, SlotView

runner = CliRunner()


@pytest.fixture(autouse=True)
def filled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, drive: Callable[..., SlotView]) -> None:
    """An isolated configuration on a SQLite journal holding three slots (nine events)."""
    for name in list(os.environ):
        if name.startswith(("CALSCHED_", "TTY_", "FORCE_COLOR")):
            monkeypatch.delenv(name)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("CALSCHED_DATABASE_URL", url)
    monkeypatch.setenv("CALSCHED_IDENTIFIER", "host-a")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    journal = Journal.open(url, "host-a", upgrade=True)
    try:
        drive(journal, "s1", SlotState.completed, agent_id="a")
        drive(journal, "s2", SlotState.in_progress, agent_id="b")
        drive(journal, "s3", SlotState.aborted, agent_id="a")
    finally:
        journal.close()


def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make rich take stderr for a terminal (its own switch for that)."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")


def test_verify_shows_a_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal, verify draws its bar on stderr to the event count; stdout keeps
    only the result."""
    terminal(monkeypatch)
    result = runner.invoke(app, ["journal", "verify"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: the slots projection matches the events (checked ")
    assert "verifying events" in result.stderr
    assert "18/18" in result.stderr  # the fold, then the hash chain


def test_rebuild_shows_a_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """rebuild draws its bar too."""
    terminal(monkeypatch)
    result = runner.invoke(app, ["journal", "rebuild"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "rebuilt the projection of 3 slot(s) from the events\n"
    assert "rebuilding from events" in result.stderr
    assert "9/9" in result.stderr


def test_no_bar_off_a_terminal_or_with_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """Into a pipe nothing is drawn; with --json not even on a terminal."""
    piped = runner.invoke(app, ["journal", "verify"])
    assert (piped.exit_code, piped.stderr) == (0, "")
    terminal(monkeypatch)
    as_json = runner.invoke(app, ["journal", "verify", "--json"])
    assert as_json.exit_code == 0
    report = json.loads(as_json.stdout)
    assert (report["ok"], report["mismatches"], report["slots"], report["events"]) == (
        True,
        [],
        3,
        9,
    )
    assert as_json.stderr == ""


def test_the_total_is_counted_only_for_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting may cost a query: it is not asked for when no bar is drawn."""

    def total() -> int:
        raise AssertionError("counted without a bar")

    with progress_bar("x", total) as advance:
        assert advance is None
    terminal(monkeypatch)
    with progress_bar("x", total, quiet=True) as advance:
        assert advance is None
    with progress_bar("x", lambda: 3) as advance:
        assert advance is not None
        advance(3)
