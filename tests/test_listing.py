"""Listings (calsched.commands.listing) through the commands that print them: bounded by
default with a "showing N of M" note, --all, JSON and JSON Lines, streamed output, and
tables that fit an 80-column terminal with every timestamp whole."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from calsched.backend.calendar import LocalCalendar
from calsched.commands.listing import TABLE_BLOCK, Format, emit, field_cell
from calsched.journal import Journal
from calsched.model import SlotState, Trigger
from tests.conftest import PATHS, cli, request_for

runner = CliRunner()

#: A table timestamp printed whole.
STAMP = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
#: The number of slots in ``many``: more than a listing shows by default.
SLOTS = 60


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An isolated configuration on a SQLite file, identifier host-a."""
    for name in list(os.environ):
        if name.startswith("CALSCHED_") and name != "CALSCHED_TEST_PG_URL":
            monkeypatch.delenv(name)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("CALSCHED_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("CALSCHED_IDENTIFIER", "host-a")
    return tmp_path


@pytest.fixture
def many(env: Path) -> Iterator[Journal]:
    """SLOTS slots with realistic ids, four events each (one transaction): even ones
    completed by agent-a, odd ones completed by agent-b."""
    journal = Journal.open(f"sqlite:///{env / 'cli.db'}", "host-a", upgrade=True)
    requests = []
    for index in range(SLOTS):
        slot_id, agent = f"s-5f3a9c1e{index:04d}", ("agent-a", "agent-b")[index % 2]
        for trigger in (Trigger.receive, *PATHS[SlotState.completed]):
            summary = {"summary": "report sent to the team"} if trigger is Trigger.complete else {}
            requests.append(request_for(slot_id, trigger, agent_id=agent, **summary))
    journal.apply_many(requests)
    yield journal
    journal.close()


# -- bounded by default ------------------------------------------------------------------


def test_history_shows_the_newest_50_and_says_so(many: Journal) -> None:
    """history shows 50 slots by default and notes how many there are; --all shows all."""
    result = cli("history", "--json")
    rows = json.loads(result.stdout)
    assert len(rows) == 50
    assert rows[0]["slot_id"] == f"s-5f3a9c1e{SLOTS - 1:04d}"  # newest first
    assert result.stderr == "showing the newest 50 of 60 slots (use --limit N or --all)\n"
    everything = cli("history", "--all", "--json")
    assert len(json.loads(everything.stdout)) == SLOTS
    assert everything.stderr == ""
    assert len(json.loads(cli("history", "--limit", "0", "--json").stdout)) == SLOTS
    limited = cli("history", "--limit", "5", "--agent", "agent-a", "--json")
    assert len(json.loads(limited.stdout)) == 5
    assert "showing the newest 5 of 30 slots" in limited.stderr
    exact = cli("history", "--limit", str(SLOTS), "--json")
    assert exact.stderr == ""  # nothing left out, nothing to say


def test_events_show_the_last_50_and_say_so(many: Journal) -> None:
    """events shows the last 50 events, oldest first, and notes the total; --all all."""
    result = cli("events", "--json")
    rows = json.loads(result.stdout)
    every = many.events()
    assert [r["seq"] for r in rows] == [e.seq for e in every[-50:]]
    assert result.stderr == (
        f"showing the last 50 of {len(every)} events (use --limit N or --all)\n"
    )
    assert len(json.loads(cli("events", "--all", "--json").stdout)) == len(every)
    table = cli("events")
    assert "showing the last 50" in table.stderr
    assert len(STAMP.findall(table.stdout)) == 50


def test_slots_list_shows_the_first_50_and_says_so(env: Path) -> None:
    """slots list shows the first 50 calendar slots by fire time, and says how many."""
    journal = Journal.open(f"sqlite:///{env / 'cli.db'}", "host-a", upgrade=True)
    try:
        calendar = LocalCalendar(journal.engine)
        start = datetime.now(UTC)
        for index in range(SLOTS):
            calendar.add(f"c-{index:03d}", "bob", fire_at=start + timedelta(minutes=index))
    finally:
        journal.close()
    result = cli("slots", "list", "--json")
    assert [r["id"] for r in json.loads(result.stdout)] == [f"c-{i:03d}" for i in range(50)]
    assert result.stderr == "showing the first 50 of 60 slots (use --limit N or --all)\n"
    assert len(json.loads(cli("slots", "list", "--all", "--json").stdout)) == SLOTS
    lines = cli("slots", "list", "--limit", "3", "--jsonl").stdout.splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["c-000", "c-001", "c-002"]


def test_verify_lists_at_most_50_mismatches(many: Journal) -> None:
    """A projection wrong everywhere: 50 mismatch lines and a note; --json has them all."""
    with many.engine.begin() as conn:
        conn.execute(text("UPDATE slots SET summary = 'tampered'"))
    result = cli("journal", "verify", code=1)
    assert len(result.stdout.splitlines()) == 50
    assert "showing the first 50 of 60 mismatches (`--json` lists them all)" in result.stderr
    report = json.loads(cli("journal", "verify", "--json", code=1).stdout)
    assert len(report["mismatches"]) == SLOTS


# -- filters on events -------------------------------------------------------------------


def test_events_filter_by_agent_and_time(many: Journal) -> None:
    """--agent keeps one agent's events; --since/--until the recording time."""
    mine = json.loads(cli("events", "--agent", "agent-b", "--all", "--json").stdout)
    assert len(mine) == SLOTS * 4 // 2
    assert {r["agent_id"] for r in mine} == {"agent-b"}
    recent = json.loads(cli("events", "--since", "-1h", "--all", "--json").stdout)
    assert len(recent) == SLOTS * 4
    assert json.loads(cli("events", "--since", "+1h", "--json").stdout) == []
    assert json.loads(cli("events", "--until", "-1h", "--json").stdout) == []
    odd = ["events", "--slot", "s-5f3a9c1e0003", "--json"]
    assert len(json.loads(cli(*odd, "--agent", "agent-b").stdout)) == 4
    assert json.loads(cli(*odd, "--agent", "agent-a").stdout) == []
    assert "no events" in cli("events", "--agent", "nobody").stderr


# -- JSON Lines --------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["history"], ["events"]], ids=["history", "events"])
def test_jsonl_is_one_object_a_line_equal_to_json(many: Journal, command: list[str]) -> None:
    """--jsonl prints the same objects as --json, one a line."""
    array = json.loads(cli(*command, "--all", "--json").stdout)
    lines = cli(*command, "--all", "--jsonl").stdout.splitlines()
    assert [json.loads(line) for line in lines] == array
    assert len(lines) == len(array) > 50


def test_history_format_jsonl_and_csv(many: Journal) -> None:
    """--format jsonl equals --jsonl; csv keeps its header; forms cannot be mixed."""
    assert cli("history", "-f", "jsonl").stdout == cli("history", "--jsonl").stdout
    rows = list(csv.DictReader(io.StringIO(cli("history", "-f", "csv", "--all").stdout)))
    assert len(rows) == SLOTS
    mixed = cli("history", "--json", "--format", "csv", code=2)
    assert mixed.stderr == "error: give only one of --json, --jsonl and --format\n"
    both = cli("events", "--json", "--jsonl", code=2)
    assert both.stderr == "error: give only one of --json and --jsonl\n"


# -- streaming ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", [Format.json, Format.jsonl, Format.csv, Format.table])
def test_emit_writes_each_row_before_reading_the_next(
    form: Format, capsys: pytest.CaptureFixture[str]
) -> None:
    """Output streams: a row is written before the next is read (a table by blocks),
    so --all never holds the whole journal."""
    written: list[str] = []
    per_block = TABLE_BLOCK if form is Format.table else 1
    total = per_block * 2 + 1

    def rows() -> Iterator[dict[str, Any]]:
        for index in range(total):
            if index and index % per_block == 0:
                written.append(capsys.readouterr().out)
                assert f"r{index - 1:05d}" in written[-1], index  # the previous row is out
            yield {"id": f"r{index:05d}"}

    shown = emit(rows(), form, [field_cell("id", "id")], fields=["id"])
    assert shown == total
    out = "".join(written) + capsys.readouterr().out
    assert out.count("r0") == total
    if form is Format.json:
        assert [r["id"] for r in json.loads(out)] == [f"r{i:05d}" for i in range(total)]


def test_emit_of_nothing_is_still_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """No rows: an empty JSON array, no JSON Lines, a CSV header."""
    assert emit(iter(()), Format.json, []) == 0
    assert json.loads(capsys.readouterr().out) == []
    emit(iter(()), Format.jsonl, [])
    assert capsys.readouterr().out == ""
    emit(iter(()), Format.csv, [], fields=["a", "b"])
    assert capsys.readouterr().out == "a,b\n"


# -- 80 columns --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "stamps"),
    [(["history"], 50), (["events"], 50), (["slots", "list"], SLOTS)],
    ids=["history", "events", "slots-list"],
)
def test_tables_fit_80_columns_with_timestamps_whole(
    many: Journal, monkeypatch: pytest.MonkeyPatch, command: list[str], stamps: int
) -> None:
    """At 80 columns every line fits, every row's timestamp prints whole, nothing is cut
    with an ellipsis, and the ids are all there."""
    if command == ["slots", "list"]:
        calendar = LocalCalendar(many.engine)
        for index in range(SLOTS):
            calendar.add(f"s-5f3a9c1e{index:04d}", "agent-with-a-longer-name")
    monkeypatch.setenv("COLUMNS", "80")
    out = cli(*command, "--all" if command == ["slots", "list"] else "--limit=50").stdout
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert len(STAMP.findall(out)) == stamps
    assert "…" not in out
    assert "s-5f3a9c1e0059" in out or command == ["events"]  # folded ids stay whole
    monkeypatch.setenv("COLUMNS", "160")
    wide = cli(*command).stdout
    assert len(wide.splitlines()[0]) > 80  # a wide terminal gets the wide columns


def test_narrow_and_wide_event_columns(many: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below 100 columns events drop attempt, actor and from→to for the new state."""
    monkeypatch.setenv("COLUMNS", "80")
    narrow = cli("events", "--limit", "1").stdout.splitlines()[0].split()
    assert narrow == ["seq", "recorded", "slot", "agent", "trigger", "state", "note"]
    monkeypatch.setenv("COLUMNS", "120")
    wide = cli("events", "--limit", "1").stdout.splitlines()[0].split()
    assert wide == [
        "seq",
        "recorded",
        "slot",
        "att",
        "agent",
        "trigger",
        "actor",
        "from→to",
        "note",
    ]


@pytest.mark.parametrize("form", list(Format))
def test_a_read_that_fails_at_once_prints_nothing(
    form: Format, capsys: pytest.CaptureFixture[str]
) -> None:
    """A query that fails before its first row leaves stdout empty (no lone ``[`` or CSV
    header before the error line)."""

    def failing() -> Iterator[dict[str, Any]]:
        raise RuntimeError("the read failed")
        yield {}  # a generator

    with pytest.raises(RuntimeError):
        emit(failing(), form, [field_cell("id", "id")], fields=["id"])
    assert capsys.readouterr().out == ""
