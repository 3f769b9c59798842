"""SQL-injection strings in every text filter of ``calsched history`` and ``calsched events``.

A journal is filled with slots whose agent and slot ids are themselves awkward (quotes,
``%``, ``_``, unicode); every injection string is passed to each filter through the real
command (typer's CliRunner), and the rows printed must equal a Python-side filter of the
whole journal: no extra row, no missing row, no error other than a clean refusal (a NUL
on PostgreSQL, which cannot compare text holding one: "error: journal read failed"). The
enum and time filters must refuse such strings as usage errors. SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from calsched.cli import app
from calsched.journal import Journal
from calsched.model import SlotState
from tests.conftest import drive_slot

runner = CliRunner()

#: Agent ids of the filled journal: a plain one, and ids an unescaped LIKE or a quoted
#: SQL string would confuse.
AGENTS = ("alice", "bob", "o'brien", "100%", "a_b", "axb", "Ünïcødé", "robert'); --")

INJECTIONS = (
    "' OR 1=1 --",
    "' OR '1'='1",
    '" OR ""="',
    "'; DROP TABLE events; --",
    '"; DROP TABLE events; --',
    "alice' --",
    "alice' OR agent_id LIKE '%",
    "') OR ('a'='a",
    "1; SELECT * FROM slots",
    "' UNION SELECT * FROM events --",
    "%",
    "%%",
    "_",
    "a_b",
    "a%",
    "*",
    "\\",
    "\\'",
    "alice\x00",
    "\x00",
    "ALICE",
    "alice ",
    "Ünïcødé",
    "ünïcødé",
    "🙂' OR 1=1 --",
    "$1",
    ":agent_id",
    "?",
    "o'brien",
    "100%",
    "robert'); --",
)


@pytest.fixture
def filled(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Journal]:
    """A journal on ``db_url`` with two slots per agent (one completed, one aborted) and
    the CLI pointed at it."""
    journal = Journal.open(db_url, "host-a", upgrade=True)
    for n, agent in enumerate(AGENTS):
        drive_slot(journal, f"{agent}-{n}", SlotState.completed, agent_id=agent)
        drive_slot(journal, f"{agent}-{n}b", SlotState.aborted, agent_id=agent)
    journal.close()
    for name in ("CALSCHED_CONFIG", "CALSCHED_BACKEND_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("CALSCHED_DATABASE_URL", db_url)
    monkeypatch.setenv("CALSCHED_IDENTIFIER", "host-a")
    monkeypatch.setenv("CALSCHED_CONTROL__SECRET_FILE", str(tmp_path / "control.secret"))
    reader = Journal.open(db_url, "host-a")
    yield reader
    reader.close()


def _json(*args: str) -> list[dict[str, object]]:
    result = runner.invoke(app, list(args))
    if "\x00" in "".join(args) and result.exit_code == 1:
        # PostgreSQL refuses NUL in a text parameter: the command says so on one line and
        # prints no row (SQLite compares and finds none). Either way, no extra row.
        assert result.output.startswith("error: journal read failed: "), result.output
        assert "NUL" in result.output
        assert result.stdout == ""  # the error went to stderr; no row printed
        assert result.output.count("\n") == 1
        return []
    assert result.exit_code == 0, (args, result.output)
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_injection_strings_match_the_python_oracle(filled: Journal) -> None:
    """Every injection string in --agent (history) and --slot (events): exactly the rows a
    Python filter over the whole journal gives, and the journal unchanged after."""
    all_slots = _json("history", "--limit", "0", "--format", "json")
    all_events = _json("events", "--all", "--json")
    assert len(all_slots) == 2 * len(AGENTS)
    tried = 0
    for value in INJECTIONS + AGENTS:
        got = _json("history", "--agent", value, "--limit", "0", "--format", "json")
        assert got == [r for r in all_slots if r["agent_id"] == value], value
        slot_ids = {value, f"{value}-0", *(str(r["slot_id"]) for r in all_slots)}
        for slot_id in sorted(s for s in slot_ids if value in s)[:3]:
            got_events = _json("events", "--slot", slot_id, "--json")
            assert got_events == [e for e in all_events if e["slot_id"] == slot_id], slot_id
        tried += 1
    # Nothing was dropped or added by any of them.
    assert _json("history", "--limit", "0", "--format", "json") == all_slots
    assert _json("events", "--all", "--json") == all_events
    print(f"\ninjection strings tried {tried} on --agent and --slot: 0 extra rows")


@pytest.mark.parametrize("option", ["--state", "--since", "--until", "--limit"])
def test_injection_strings_in_typed_filters_are_usage_errors(filled: Journal, option: str) -> None:
    """The typed filters of history refuse injection strings cleanly (exit 1 or 2, one
    ``error:`` line, no traceback) and print no rows."""
    for value in INJECTIONS:
        result = runner.invoke(app, ["history", option, value, "--format", "json"])
        assert result.exit_code in (1, 2), (option, value, result.output)
        assert "error" in result.output.lower(), (option, value, result.output)
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
