"""The calsched command, in-process with CliRunner: help, errors, and daemon-free paths.

The control-API commands against a served API are in tests/integration/test_cli_control.py;
``run``'s start-up errors in a real process in tests/integration/test_cli_run_errors.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import stat
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from sqlalchemy import text
from typer.testing import CliRunner, Result

from calsched import __version__
from calsched.cli import app
from calsched.commands.common import parse_when
from calsched.errors import InvalidInputError
from calsched.journal import Journal
from calsched.journal.lease import Lease, death_lock_for
from calsched.model import SlotState, SlotView
from calsched.tokens import admin_token, agent_token, load_or_create_secret
from tests.conftest import cli, free_port, isolate_cli_env

runner = CliRunner()

#: Every command path; test_every_command_is_listed keeps this in step with the app.
COMMANDS: list[tuple[str, ...]] = [
    (),
    ("run",),
    ("history",),
    ("events",),
    ("token",),
    ("slot",),
    ("complete",),
    ("abort",),
    ("pause",),
    ("resume",),
    ("status",),
    ("mcp",),
    ("slots",),
    ("slots", "add"),
    ("slots", "list"),
    ("journal",),
    ("journal", "verify"),
    ("journal", "rebuild"),
    ("db",),
    ("db", "upgrade"),
    ("journal", "prune"),
    ("db", "current"),
    ("backend",),
    ("backend", "serve"),
    ("outbox",),
    ("outbox", "list"),
    ("outbox", "retry"),
    ("outbox", "discard"),
    ("doctor",),
    ("demo",),  # calsched.demo's; its own tests run it
    ("state",),
]


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An isolated configuration: a SQLite file, identifier host-a, dirs in tmp_path."""
    monkeypatch.delenv("COLUMNS", raising=False)
    isolate_cli_env(monkeypatch, tmp_path, "cli.db")
    return tmp_path


def error_line(result: Result) -> str:
    """The one ``error:`` line a failed command writes to stderr."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def db_path(env: Path) -> Path:
    """The SQLite file the CLI uses."""
    return env / "cli.db"


@pytest.fixture
def journal(db_path: Path) -> Iterator[Journal]:
    """A migrated journal on the CLI's database, as host-a."""
    opened = Journal.open(f"sqlite:///{db_path}", "host-a", upgrade=True)
    yield opened
    opened.close()


@pytest.fixture
def filled(journal: Journal, drive: Callable[..., SlotView]) -> Journal:
    """s1 completed (agent-1), then s2 in progress (agent-2), then s3 aborted (agent-1)."""
    drive(journal, "s1", SlotState.completed, agent_id="agent-1")
    drive(journal, "s2", SlotState.in_progress, agent_id="agent-2")
    drive(journal, "s3", SlotState.aborted, agent_id="agent-1")
    return journal


# -- help, version, usage ----------------------------------------------------------------


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "calsched")
def test_help(path: tuple[str, ...]) -> None:
    """Every command answers --help with its usage."""
    result = cli(*path, "--help")
    assert "Usage:" in result.stdout
    assert " ".join(("calsched", *path)) in " ".join(result.stdout.split())


def test_every_command_is_listed() -> None:
    """COMMANDS names every command the app has, so each one gets a --help test."""
    found: set[tuple[str, ...]] = set()

    def walk(command: object, path: tuple[str, ...]) -> None:
        found.add(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    assert found == set(COMMANDS)


def test_version() -> None:
    """--version prints the package version."""
    assert cli("--version").stdout.strip() == f"calsched {__version__}"


def test_version_short_option() -> None:
    """-V is --version."""
    assert cli("-V").stdout == cli("--version").stdout


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "calsched")
def test_help_shows_no_type_placeholders(path: tuple[str, ...]) -> None:
    """Help names what an option takes (ID, N, TIME, a|b), never a Python type in angle
    brackets, and a flag shows no value at all."""
    out = cli(*path, "--help").stdout
    assert re.findall(r"<[^>\n]*>", out) == []
    help_line = next(line for line in out.splitlines() if "--help" in line)
    assert help_line.split("--help")[1].split()[:2] == ["-h", "Show"]


def test_option_metavars_name_what_they_take(monkeypatch: pytest.MonkeyPatch) -> None:
    """The words help shows after options."""
    monkeypatch.setenv("COLUMNS", "120")
    out = " ".join(cli("events", "--help").stdout.split())
    for shown in ("--slot -s ID", "--agent -a ID", "--since TIME", "--limit N", "--all Show"):
        assert shown in out
    assert "--format -f table|json|jsonl|csv" in " ".join(cli("history", "--help").stdout.split())


def test_shell_completion() -> None:
    """--show-completion prints a script; the completion protocol completes commands
    and options."""
    script = runner.invoke(app, ["--show-completion", "bash"], prog_name="calsched")
    assert script.exit_code == 0
    assert "_CALSCHED_COMPLETE=complete_bash" in script.stdout
    assert "--install-completion" in cli("--help").stdout

    def complete(words: str) -> list[str]:
        env = {
            "_CALSCHED_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - 1),
        }
        result = runner.invoke(app, [], env=env, prog_name="calsched")
        assert result.exit_code == 0
        return result.stdout.split()

    assert complete("calsched hist") == ["history"]
    assert {"--agent", "--since", "--jsonl", "--all"} <= set(complete("calsched events --"))


def test_a_missing_postgres_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without psycopg a PostgreSQL URL says which driver and how to install it."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now fails
    url = "postgresql+psycopg://calsched:hunter2@127.0.0.1:9/calsched"
    line = error_line(cli("--database-url", url, "history", code=1))
    assert line == (
        "error: the database URL needs the PostgreSQL driver psycopg: "
        "pip install 'calsched[postgres]'"
    )


def test_single_object_commands_print_one_json_document(filled: Journal) -> None:
    """db current, token and journal verify print one JSON object with --json."""
    for args in (["db", "current"], ["token", "--agent", "bob"], ["journal", "verify"]):
        result = cli(*args, "--json")
        assert isinstance(json.loads(result.stdout), dict), args
        assert result.stderr == "", args


@pytest.mark.parametrize("path", [(), ("slots",), ("db",)], ids=["root", "slots", "db"])
def test_bare_group_prints_help(path: tuple[str, ...]) -> None:
    """A group without a command prints its help and exits 0."""
    assert "Commands" in cli(*path).stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["complete"], "error: Missing option '--agent'"),
        (["history", "--state", "bogus"], "error: Invalid value for '--state'"),
        (["history", "--limit", "-1"], "error: Invalid value for '--limit'"),
        (["nonsense"], "error: No such command 'nonsense'"),
        (["token", "--agent", "a", "--admin"], "error: give exactly one of --agent ID or --admin"),
        (["token"], "error: give exactly one of --agent ID or --admin"),
    ],
    ids=["missing-option", "bad-choice", "out-of-range", "no-such-command", "both", "neither"],
)
def test_usage_errors_are_one_line(args: list[str], expected: str) -> None:
    """A usage mistake is one error line on stderr and status 2."""
    assert error_line(cli(*args, code=2)).startswith(expected)


def test_bad_config_file_is_one_line(env: Path) -> None:
    """A missing config file is one error line and status 1."""
    result = cli("--config", str(env / "missing.toml"), "history", code=1)
    assert error_line(result) == f"error: config file {env / 'missing.toml'} does not exist"


def test_bad_environment_value_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad CALSCHED_* value is one error line naming the variable."""
    monkeypatch.setenv("CALSCHED_CONTROL__PORT", "eighty")
    line = error_line(cli("status", code=1))
    assert line.startswith("error: invalid setting control.port from CALSCHED_CONTROL__PORT")


def test_run_with_bad_flag_value_is_one_line() -> None:
    """run refuses an impossible control port before starting anything."""
    line = error_line(cli("run", "--control-port", "0", code=1))
    assert line.startswith("error: invalid setting control.port from the command line")


def test_root_flags_override_environment(filled: Journal, env: Path) -> None:
    """--identifier and --database-url override CALSCHED_IDENTIFIER/DATABASE_URL."""
    assert json.loads(cli("--identifier", "other-host", "history", "-f", "json").stdout) == []
    result = cli("--database-url", f"sqlite:///{env / 'elsewhere.db'}", "history", code=1)
    assert "no database at" in error_line(result)


# -- parse_when --------------------------------------------------------------------------


NOW = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("now", NOW),
        ("+30s", NOW + timedelta(seconds=30)),
        ("+5m", NOW + timedelta(minutes=5)),
        ("-2h", NOW - timedelta(hours=2)),
        ("+1.5d", NOW + timedelta(hours=36)),
        ("2026-11-28T09:30:00Z", datetime(2026, 11, 28, 9, 30, tzinfo=UTC)),
        ("2026-11-28T10:30:00+01:00", datetime(2026, 11, 28, 9, 30, tzinfo=UTC)),
        ("2026-11-28T09:30:00", datetime(2026, 11, 28, 9, 30, tzinfo=UTC)),
    ],
)
def test_parse_when(given: str, expected: datetime) -> None:
    """Times are 'now', +/- a number with s/m/h/d, or RFC 3339 (naive is UTC)."""
    assert parse_when(given, option="--at", now=NOW) == expected


@pytest.mark.parametrize("given", ["soon", "+5", "5m", "+5y", ""])
def test_parse_when_rejects(given: str) -> None:
    """Anything else is an InvalidInputError naming the option."""
    with pytest.raises(InvalidInputError, match=r"^invalid input: --at: "):
        parse_when(given, option="--at", now=NOW)


# -- db ----------------------------------------------------------------------------------


def test_db_current_and_upgrade(db_path: Path) -> None:
    """db current shows no revision before upgrade (creating nothing), head after."""
    before = json.loads(cli("db", "current", "--json").stdout)
    assert before["current"] is None
    assert before["up_to_date"] is False
    assert not db_path.exists()
    assert "current: (none)" in cli("db", "current").stdout
    upgraded = cli("db", "upgrade").stdout
    assert f"is at revision {before['head']} (head)" in upgraded
    after = json.loads(cli("db", "current", "--json").stdout)
    assert after == {
        "database": before["database"],
        "current": before["head"],
        "head": before["head"],
        "up_to_date": True,
    }
    assert before["database"].startswith("sqlite:///")
    assert "database: sqlite:///" in cli("db", "current").stdout
    assert "run `calsched db upgrade`" not in cli("db", "current").stderr


def test_readers_do_not_create_a_database(db_path: Path) -> None:
    """history on a missing SQLite file is an error, and the file is not created."""
    line = error_line(cli("history", code=1))
    assert line == (
        f"error: no database at {db_path}; `calsched db upgrade` or `calsched run` creates it"
    )
    assert not db_path.exists()


@pytest.mark.parametrize(
    "args", [["history"], ["db", "upgrade"], ["slots", "list"], ["journal", "verify"]]
)
def test_schema_newer_than_code(journal: Journal, args: list[str]) -> None:
    """A database stamped by a newer calsched is refused in one line, and not touched."""
    with journal.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    line = error_line(cli(*args, code=1))
    assert "revision 9999_future" in line
    with journal.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == (
            "9999_future"
        )


# -- slots -------------------------------------------------------------------------------


def test_slots_add_and_list(db_path: Path) -> None:
    """slots add schedules into a fresh database; slots list shows it (table and JSON)."""
    before = datetime.now(UTC)
    added = json.loads(
        cli(
            "slots",
            "add",
            "--id",
            "s-1",
            "--agent",
            "bob",
            "--title",
            "Daily report",
            "--prompt",
            "Write it",
            "--at",
            "+5m",
            "--override-message",
            "Now!",
            "--json",
        ).stdout
    )
    assert db_path.exists()
    assert (added["id"], added["agent_id"], added["status"]) == ("s-1", "bob", "scheduled")
    assert added["wake_options"] == {"override_message": "Now!"}
    fire_at = datetime.fromisoformat(added["fire_at"])
    assert before + timedelta(minutes=5) <= fire_at <= datetime.now(UTC) + timedelta(minutes=5)
    generated = cli("slots", "add", "--agent", "carol").stdout
    assert generated.startswith("added slot s-")
    listed = json.loads(cli("slots", "list", "--json").stdout)
    assert [row["agent_id"] for row in listed] == ["carol", "bob"]  # by fire time
    table = cli("slots", "list").stdout
    assert "s-1" in table
    assert "Daily report" in table
    assert "scheduled" in table


def test_slots_list_status_filter() -> None:
    """slots list --status keeps only slots with that calendar status."""
    cli("slots", "add", "--id", "s-1", "--agent", "bob")
    assert len(json.loads(cli("slots", "list", "--status", "scheduled", "--json").stdout)) == 1
    empty = cli("slots", "list", "--status", "fired", "--status", "completed")
    assert "the calendar is empty" in empty.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--at", "tomorrow-ish"], "error: invalid input: --at: "),
        (["--id", "x" * 300], "error: invalid input: id: "),
        (["--id", "dup"], "error: invalid input: id: a slot with the id 'dup' already exists"),
    ],
    ids=["bad-time", "long-id", "duplicate"],
)
def test_slots_add_rejects(args: list[str], expected: str) -> None:
    """Bad slot input is one error line and status 1."""
    cli("slots", "add", "--id", "dup", "--agent", "bob")
    assert error_line(cli("slots", "add", "--agent", "bob", *args, code=1)).startswith(expected)


# -- history and events ------------------------------------------------------------------


def test_history_table(filled: Journal) -> None:
    """history prints every slot in a table."""
    out = cli("history").stdout
    for word in ("s1", "s2", "s3", "completed", "in_progress", "aborted", "agent-2"):
        assert word in out


def test_history_json(filled: Journal) -> None:
    """history --format json lists slots newest change first, with their fields."""
    rows = json.loads(cli("history", "--format", "json").stdout)
    assert [r["slot_id"] for r in rows] == ["s3", "s2", "s1"]
    first = rows[2]
    assert first["state"] == "completed"
    assert first["agent_id"] == "agent-1"
    assert first["title"] == "title of s1"
    assert first["resolved_at"].endswith("Z")
    assert set(first) == {
        "slot_id",
        "agent_id",
        "state",
        "attempt",
        "title",
        "received_at",
        "started_at",
        "resolved_at",
        "updated_at",
        "summary",
        "reason",
    }


def test_history_csv(filled: Journal) -> None:
    """history --format csv writes a header and one row per slot."""
    rows = list(csv.DictReader(io.StringIO(cli("history", "-f", "csv").stdout)))
    assert [r["slot_id"] for r in rows] == ["s3", "s2", "s1"]
    assert rows[1]["state"] == "in_progress"
    assert rows[1]["resolved_at"] == ""


HISTORY_FILTERS: list[tuple[list[str], list[str]]] = [
    (["--agent", "agent-1"], ["s3", "s1"]),
    (["--state", "completed"], ["s1"]),
    (["--limit", "1"], ["s3"]),
    (["--limit", "0"], ["s3", "s2", "s1"]),
    (["--since", "-1h"], ["s3", "s2", "s1"]),
    (["--since", "+1h"], []),
    (["--until", "-1h"], []),
    (["--until", "2999-01-01T00:00:00Z"], ["s3", "s2", "s1"]),
    (["--agent", "agent-1", "--state", "aborted"], ["s3"]),
]


def test_history_filters(filled: Journal) -> None:
    """history filters by agent, state, time window and count (one journal, many queries)."""
    for args, expected in HISTORY_FILTERS:
        rows = json.loads(cli("history", "-f", "json", *args).stdout)
        assert [r["slot_id"] for r in rows] == expected, args


def test_history_empty_and_bad_time(filled: Journal) -> None:
    """No match says so on stderr; a bad --since is one error line."""
    assert "no slots match" in cli("history", "--agent", "nobody").stderr
    assert error_line(cli("history", "--since", "yesterday", code=1)).startswith(
        "error: invalid input: --since: "
    )


def test_events(filled: Journal) -> None:
    """events lists every event in order, or one slot's; as a table or JSON."""
    every = json.loads(cli("events", "--json").stdout)
    assert [e["seq"] for e in every] == sorted(e["seq"] for e in every)
    assert {e["slot_id"] for e in every} == {"s1", "s2", "s3"}
    one = json.loads(cli("events", "--slot", "s1", "--json").stdout)
    assert [(e["kind"], e["state_to"]) for e in one] == [
        ("receive", "pending"),
        ("dispatch", "dispatching"),
        ("woke", "in_progress"),
        ("complete", "completed"),
    ]
    assert one[0]["state_from"] is None
    assert len(json.loads(cli("events", "--limit", "2", "--json").stdout)) == 2
    table = cli("events", "--slot", "s3").stdout
    assert "new → pending" in table
    assert "pending → aborted" in table
    assert "no events for slot 'zzz'" in cli("events", "--slot", "zzz").stderr


# -- journal verify / rebuild ------------------------------------------------------------


def test_journal_verify_and_rebuild(filled: Journal) -> None:
    """verify passes, fails listing a tampered row (exit 1), and passes after rebuild."""
    assert "ok:" in cli("journal", "verify").stdout
    report = json.loads(cli("journal", "verify", "--json").stdout)
    assert report == {
        "ok": True,
        "slots": 3,
        "events": 9,
        "mismatches": [],
        "chain": {"ok": True, "head": report["chain"]["head"], "checkpoints": 0, "break": None},
    }
    assert report["chain"]["head"] == filled.verify_chain().head
    assert "(checked 3 slot(s) and 9 event(s) of 'host-a')" in cli("journal", "verify").stdout
    with filled.engine.begin() as conn:
        conn.execute(text("UPDATE slots SET state = 'paused' WHERE slot_id = 's1'"))
    failed = cli("journal", "verify", code=1)
    assert "mismatch: host-a/s1: state: stored" in failed.stdout
    assert error_line(failed).startswith("error: 1 mismatch(es)")
    report = json.loads(cli("journal", "verify", "--json", code=1).stdout)
    assert report["ok"] is False
    assert report["mismatches"][0]["slot_id"] == "s1"
    assert report["mismatches"][0]["field"] == "state"
    assert "rebuilt the projection of 3 slot(s)" in cli("journal", "rebuild").stdout
    assert "ok:" in cli("journal", "verify").stdout


def test_journal_verify_names_a_tampered_event(filled: Journal) -> None:
    """An event row edited by SQL: the chain breaks there, named with its seq, exit 1;
    --json says the same."""
    tampered = filled.events()[3]
    seq, event_id = tampered.seq, tampered.event_id
    with filled.engine.begin() as conn:
        conn.execute(text("UPDATE events SET summary = 'forged' WHERE seq = :s"), {"s": seq})
    failed = cli("journal", "verify", code=1)
    assert f"chain broken: host-a: event seq {seq} ({event_id}, slot s1)" in failed.stdout
    assert "hash does not match its content" in failed.stdout
    assert error_line(failed).startswith(
        f"error: the hash chain of 'host-a' breaks at event seq {seq}"
    )
    report = json.loads(cli("journal", "verify", "--json", code=1).stdout)
    assert report["ok"] is False
    assert report["mismatches"]  # the forged summary is folded: the projection differs
    assert report["chain"]["break"] == {
        "seq": seq,
        "event_id": event_id,
        "slot_id": report["chain"]["break"]["slot_id"],
        "what": "hash does not match its content",
    }


def test_journal_verify_checks_an_anchor(filled: Journal) -> None:
    """--anchor: the head printed earlier passes; another hash fails; a malformed one is
    refused before anything is read."""
    head = filled.verify_chain().head
    assert f"head {head}" in cli("journal", "verify").stdout
    assert "ok:" in cli("journal", "verify", "--anchor", head.upper()).stdout
    failed = cli("journal", "verify", "--anchor", "a" * 64, code=1)
    assert "chain broken: host-a: the chain's head is not the anchor" in failed.stdout
    assert "breaks at its head" in error_line(failed)
    assert "64 hexadecimal digits" in cli("journal", "verify", "--anchor", "xyz", code=1).stderr


def test_journal_verify_reports_a_missing_row(filled: Journal) -> None:
    """A projection row deleted behind the journal's back is a mismatch."""
    with filled.engine.begin() as conn:
        conn.execute(text("DELETE FROM slots WHERE slot_id = 's2'"))
    assert "host-a/s2: (row)" in cli("journal", "verify", code=1).stdout


def _live_lease(journal: Journal, identifier: str = "host-a") -> Lease:
    """A lease held by this test process, as a running daemon holds it."""
    lease = Lease(
        journal.engine,
        identifier,
        ttl_s=60,
        lock=death_lock_for(journal.engine, identifier),
        host="web-1",
        pid=4242,
    )
    lease.acquire()
    return lease


def test_journal_rebuild_refused_while_a_daemon_holds_the_identifier(filled: Journal) -> None:
    """rebuild writes the journal: refused, one line naming the holder, while a live
    daemon holds the identifier; done at once after it is gone (its lock freed)."""
    lease = _live_lease(filled)
    try:
        line = error_line(cli("journal", "rebuild", code=1))
        assert re.fullmatch(
            r"error: identifier 'host-a' is held by host web-1 pid 4242 since \S+Z "
            r"\(epoch 1\); stop the daemon first",
            line,
        ), line
        assert lease.lock is not None
        lease.lock.release()  # the daemon dies (kill -9): its row still says live
        assert "rebuilt the projection of 3 slot(s)" in cli("journal", "rebuild").stdout
    finally:
        lease.release()


def test_db_upgrade_refused_while_any_daemon_runs(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With something to migrate, db upgrade is refused while a daemon of any identifier
    holds its lease; at head it has nothing to do and says so."""
    from calsched.journal import migrate

    lease = _live_lease(journal, "host-b")
    try:
        assert "(head)" in cli("db", "upgrade").stdout
        monkeypatch.setattr(migrate, "is_at_head", lambda engine: False)
        line = error_line(cli("db", "upgrade", code=1))
        assert line.startswith("error: identifier 'host-b' is held by host web-1 pid 4242")
        assert line.endswith("; stop the daemon first")
    finally:
        lease.release()
    assert "(head)" in cli("db", "upgrade").stdout


# -- tokens ------------------------------------------------------------------------------


def test_token_agent_and_admin(env: Path) -> None:
    """token prints the HMAC tokens of the (newly created, private) secret file."""
    agent = cli("token", "--agent", "bob").stdout.strip()
    secret_file = env / "control.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = load_or_create_secret(secret_file)
    assert agent == agent_token(secret, "bob")
    assert cli("token", "--admin").stdout.strip() == admin_token(secret)
    assert cli("token", "--agent", "bob").stdout.strip() == agent  # same secret, same token
    as_json = json.loads(cli("token", "--agent", "bob", "--json").stdout)
    assert as_json == {"agent": "bob", "admin": False, "token": agent}
    assert json.loads(cli("token", "--admin", "--json").stdout)["token"] == admin_token(secret)


# -- control API commands without a daemon -----------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["slot", "--agent", "bob"],
        ["complete", "--agent", "bob"],
        ["abort", "--agent", "bob"],
        ["pause", "--agent", "bob"],
        ["resume", "--agent", "bob"],
        ["status"],
    ],
)
def test_control_commands_without_secret(env: Path, args: list[str]) -> None:
    """Without the daemon's secret file the tools say so, and create no secret."""
    line = error_line(cli(*args, code=1))
    assert line.startswith(f"error: no control secret at {env / 'control.secret'}")
    assert not (env / "control.secret").exists()


@pytest.mark.parametrize(
    "args", [["slot", "--agent", "bob"], ["complete", "--agent", "bob"], ["status"]]
)
def test_control_commands_without_daemon(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    """With nothing listening, the tools fail in one line naming the control address."""
    cli("token", "--admin")  # makes the secret
    port = free_port()
    monkeypatch.setenv("CALSCHED_CONTROL__PORT", str(port))
    line = error_line(cli(*args, code=1))
    assert line == (
        f"error: cannot reach the control API at http://127.0.0.1:{port}: "
        "is `calsched run` running?"
    )


def test_agent_token_from_environment_needs_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CALSCHED_TOKEN set, an agent tool does not need the secret file."""
    monkeypatch.setenv("CALSCHED_TOKEN", "agent.Ym9i.c2ln")
    monkeypatch.setenv("CALSCHED_CONTROL__PORT", str(free_port()))
    assert "cannot reach the control API" in error_line(cli("complete", "--agent", "bob", code=1))


# -- backend serve -----------------------------------------------------------------------


def test_backend_serve_needs_a_key() -> None:
    """backend serve refuses to start without an API key."""
    line = error_line(cli("backend", "serve", code=1))
    assert line.startswith("error: the reference backend needs an API key")


def test_backend_serve_unreadable_key_file(env: Path) -> None:
    """An --api-key-file that cannot be read is one line naming the setting."""
    line = error_line(cli("backend", "serve", "--api-key-file", str(env / "missing.key"), code=1))
    assert line.startswith("error: backend_api_key_file: cannot read")


def test_slots_add_says_when_it_fires_and_who_fires_it(journal: Journal) -> None:
    """With no daemon: "start calsched run"; with one holding the identifier: its pid and
    how soon it picks the slot up. The time is said in seconds and as a UTC time."""
    idle = cli("slots", "add", "--id", "s-now", "--agent", "bob").stdout.splitlines()
    assert idle[0].startswith("added slot s-now for agent bob at ")
    assert idle[1].startswith("fires now (due ")
    assert idle[1].endswith(
        "no daemon is running for identifier 'host-a': start `calsched run` to fire it"
    )
    lease = Lease.guarded(journal.engine, "host-a", ttl_s=30)
    lease.acquire()
    try:
        later = cli("slots", "add", "--agent", "bob", "--at", "+90s").stdout.splitlines()[1]
        as_json = cli("slots", "add", "--agent", "bob", "--json")
    finally:
        lease.release()
    assert re.match(r"fires in (89|90) s \(at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\); ", later)
    assert later.endswith(
        f"the running daemon (pid {os.getpid()} on {socket.gethostname()}) picks it up within ~1 s"
    )
    assert json.loads(as_json.stdout)["agent_id"] == "bob"  # stdout stays JSON
    assert "picks it up within ~1 s" in as_json.stderr


def test_slots_add_notes_a_remote_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding to the embedded calendar while backend_url is set says run will not use it."""
    monkeypatch.setenv("CALSCHED_BACKEND_URL", "http://127.0.0.1:9")
    result = cli("slots", "add", "--agent", "bob")
    assert result.stdout.startswith("added slot")
    assert "note: backend_url is set" in result.stderr


@pytest.mark.postgres
def test_journal_commands_on_postgres(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """db upgrade/current, slots and the journal reports work on a PostgreSQL journal."""
    monkeypatch.setenv("CALSCHED_DATABASE_URL", pg_url)
    assert json.loads(cli("db", "current", "--json").stdout)["current"] is None
    cli("db", "upgrade")
    assert json.loads(cli("db", "current", "--json").stdout)["up_to_date"] is True
    cli("slots", "add", "--id", "s-1", "--agent", "bob", "--at", "+1h")
    assert [r["id"] for r in json.loads(cli("slots", "list", "--json").stdout)] == ["s-1"]
    assert json.loads(cli("history", "-f", "json").stdout) == []
    assert json.loads(cli("events", "--json").stdout) == []
    assert "ok:" in cli("journal", "verify").stdout


# -- calsched mcp: the token comes from the environment or a file --------------------------


def test_mcp_without_a_token_is_a_usage_error(env: Path) -> None:
    """No CALSCHED_TOKEN and no token file: one line saying how to give one."""
    line = error_line(cli("mcp", "--agent", "bob", code=2))
    assert "CALSCHED_TOKEN" in line
    assert "--token-file" in line


def test_mcp_refuses_the_admin_token(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin token would act as operator: calsched mcp takes agent tokens only."""
    from calsched.tokens import admin_token

    monkeypatch.setenv("CALSCHED_TOKEN", admin_token(b"s" * 32))
    assert "not an agent token" in error_line(cli("mcp", "--agent", "bob", code=2))


@pytest.mark.parametrize(("content", "expected"), [(None, "cannot read"), ("", "is empty")])
def test_mcp_token_file_problems_are_one_line(
    env: Path, content: str | None, expected: str
) -> None:
    """A missing or empty token file is named in one error line."""
    path = env / "bob.token"
    if content is not None:
        path.write_text(content)
    line = error_line(cli("mcp", "--agent", "bob", "--token-file", str(path), code=2))
    assert expected in line
    assert str(path) in line


def test_mcp_token_is_read_from_the_file_when_the_environment_has_none(env: Path) -> None:
    """The token file's content, stripped, is the token."""
    from calsched.commands.mcp import _token

    path = env / "bob.token"
    path.write_text("agent.Ym9i.mac\n")
    assert _token(path) == "agent.Ym9i.mac"


def test_reports_on_a_database_of_another_identifier_name_it(
    db_path: Path, drive: Callable[..., SlotView]
) -> None:
    """history, events and journal verify find nothing for host-a, and say which
    identifiers the database holds; verify says how much it checked."""
    other = Journal.open(f"sqlite:///{db_path}", "old-host", upgrade=True)
    try:
        drive(other, "s1", SlotState.in_progress)
    finally:
        other.close()
    hint = "this database holds identifier 'old-host' (1 slot, 1 active)"
    assert hint in cli("history").stderr
    assert hint in cli("events").stderr
    verified = cli("journal", "verify").stdout
    assert "checked 0 slot(s) and 0 event(s) of 'host-a'" in verified
    assert hint in verified
    mine = cli("--identifier", "old-host", "journal", "verify", "--json").stdout
    assert json.loads(mine)["slots"] == 1
    assert json.loads(mine)["events"] == 3
    assert "holds identifier" not in cli("--identifier", "old-host", "history").stderr
