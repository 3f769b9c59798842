"""``calsched run`` refuses to start, in one line and status 1, when it cannot work.

Each test runs the real command in a child process (``python -m calsched``) with its own
configuration in tmp_path, and checks that nothing was started: no "daemon started" line,
and the control port left free.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from calsched.journal import Journal
from tests.integration.conftest import free_port

TIMEOUT_S = 30


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The child's environment: its own database, secret and user dirs; a free port."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CALSCHED_")}
    base.update(
        XDG_DATA_HOME=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        CALSCHED_DATABASE_URL=f"sqlite:///{tmp_path / 'run.db'}",
        CALSCHED_IDENTIFIER="host-a",
        CALSCHED_CONTROL__SECRET_FILE=str(tmp_path / "control.secret"),
        CALSCHED_CONTROL__PORT=str(free_port()),
    )
    return base


def run(
    env: dict[str, str], *args: str, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``calsched [--config PATH] run *args`` in a child; it must end by itself, status 1."""
    root = ["--config", str(config)] if config is not None else []
    done = subprocess.run(
        [sys.executable, "-m", "calsched", *root, "run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "daemon started" not in done.stderr
    return done


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line the child wrote to stderr."""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket listening on a loopback port, as another process would."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def test_bad_config(env: dict[str, str], tmp_path: Path) -> None:
    """An unknown key in the config file stops run before anything starts."""
    path = tmp_path / "c.toml"
    path.write_text("[scheduler]\nheartbeat_every = 5\n", encoding="utf-8")
    line = error_line(run(env, config=path))
    assert line == f"error: unknown setting 'scheduler.heartbeat_every' in {path}"


def test_control_port_in_use(env: dict[str, str], listener: socket.socket) -> None:
    """A control port already taken is one line naming the address."""
    port = listener.getsockname()[1]
    line = error_line(run(env, "--control-port", str(port)))
    assert line == (
        f"error: 127.0.0.1:{port} is already in use; stop the other process or pick another port"
    )


def test_schema_newer_than_code(env: dict[str, str], tmp_path: Path) -> None:
    """A database migrated by a newer calsched is refused and left as it was."""
    url = env["CALSCHED_DATABASE_URL"]
    journal = Journal.open(url, "host-a", upgrade=True)
    try:
        with journal.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
        line = error_line(run(env))
        assert "the database schema is at revision 9999_future" in line
        with journal.engine.connect() as conn:
            found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert found == "9999_future"
    finally:
        journal.close()


def test_unreachable_database(env: dict[str, str], tmp_path: Path) -> None:
    """A database that cannot be opened is one line, and the port is released."""
    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    env["CALSCHED_DATABASE_URL"] = f"sqlite:///{missing}"
    line = error_line(run(env))
    assert line.startswith("error: cannot read the database: unable to open database file")
    with socket.socket() as sock:  # the control port was bound first; it must be free again
        sock.bind(("127.0.0.1", int(env["CALSCHED_CONTROL__PORT"])))


def test_remote_backend_without_key(env: dict[str, str]) -> None:
    """A backend_url without an API key is refused at start."""
    line = error_line(run(env, "--backend-url", "http://127.0.0.1:9"))
    assert line == (
        "error: backend_url is set but there is no API key: set CALSCHED_BACKEND_API_KEY "
        "or backend_api_key_file"
    )


def test_a_renamed_host_is_refused_until_an_identifier_is_given(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A defaulted identifier (the host name) new to a database holding live slots of
    another identifier: one line naming them; an explicit --identifier starts anyway."""
    from calsched.journal import TransitionRequest
    from calsched.model import Actor, Slot, Trigger, parse

    journal = Journal.open(env["CALSCHED_DATABASE_URL"], "old-host", upgrade=True)
    try:
        slot = parse(Slot, {"id": "s1", "agent_id": "bob"})
        journal.apply(TransitionRequest("s1", Trigger.receive, Actor.backend, slot=slot))
    finally:
        journal.close()
    del env["CALSCHED_IDENTIFIER"]
    line = error_line(run(env))
    assert f"identifier {socket.gethostname()!r} (the host name) is new" in line
    assert "'old-host' (1 slot, 1 active)" in line
    assert "--identifier old-host" in line
    child = subprocess.Popen(
        [sys.executable, "-m", "calsched", "--identifier", "new-host", "run"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stderr is not None
        seen = []
        for text_line in child.stderr:
            seen.append(text_line)
            if "daemon started" in text_line:
                break
        assert any("daemon started" in x for x in seen), seen
    finally:
        child.terminate()
        child.wait(timeout=TIMEOUT_S)
        if child.stderr is not None:
            child.stderr.close()
