"""``calsched run`` imports only what it needs (issue 7, point 3).

The real command runs in a child process, against a database already at head, until its
first heartbeat has fired a slot and the backend has heard how it ended; then SIGTERM.
At exit the child writes the names in ``sys.modules``: none of the modules below may be
among them. Each is a measurable share of start-up that this path has no use for.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from calsched.backend.calendar import LocalCalendar
from calsched.errors import SlotNotFoundError
from calsched.journal import Journal
from tests.integration.conftest import free_port

#: Never on the run path: migrations when the schema is at head, the other commands'
#: output, the demo, the test fakes and the fault injection (not even with the embedded
#: calendar, whose reference backend is built without a fault plan).
NEVER = (
    "alembic",
    "mako",
    "rich",
    "pygments",
    "calsched.demo.run",
    "calsched.demo.report",
    "calsched.testing",
    "calsched.backend.faults",
    # Tracing is off by default: then OpenTelemetry is never imported (calsched.tracing).
    "opentelemetry",
)
#: Also not with a remote backend: the embedded calendar and the reference server.
NOT_REMOTE = ("calsched.backend.calendar", "calsched.backend.server")

_CHILD = (
    "import atexit, json, sys\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted(sys.modules))))\n"
    "from calsched.cli import main\n"
    "main()\n"
)


async def _run_until_settled(
    tmp_path: Path,
    calendar: LocalCalendar,
    database_url: str,
    *args: str,
    key: str = "",
    extra_env: dict[str, str] | None = None,
) -> set[str]:
    """Run the daemon until ``calendar``'s slot ended; the modules it had imported."""
    calendar.add("s1", "agent-1")  # due now: the first heartbeat fires it
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALSCHED_")}
    env.update(
        XDG_DATA_HOME=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        CALSCHED_DATABASE_URL=database_url,
        CALSCHED_IDENTIFIER="host-a",
        CALSCHED_CONTROL__SECRET_FILE=str(tmp_path / "control.secret"),
        CALSCHED_CONTROL__PORT=str(free_port()),
        # No host (not the default console): the wake fails and the slot ends, so the
        # run covers a failed wake and a delivery too.
        CALSCHED_HOST__ADAPTER="none",
    )
    if key:
        env["CALSCHED_BACKEND_API_KEY"] = key
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(out), "run", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # The wake fails, the slot is aborted, the backend hears it.
        async with asyncio.timeout(30):
            while _status(calendar) != "aborted":
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    return set(json.loads(out.read_text()))


def _status(calendar: LocalCalendar) -> str | None:
    try:
        return calendar.get("s1").status.value
    except SlotNotFoundError:
        return None


def _imported(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


@pytest.fixture
def at_head(tmp_path: Path) -> str:
    """A SQLite journal already migrated, as every start but the first finds it."""
    url = f"sqlite:///{tmp_path / 'run.db'}"
    Journal.open(url, "host-a", upgrade=True).close()
    return url


async def test_run_with_a_remote_backend_imports_only_what_it_needs(
    tmp_path: Path, at_head: str, calendar: LocalCalendar, backend_url: str, api_key: str
) -> None:
    """Remote backend: none of those, nor the embedded calendar or the reference server."""
    modules = await _run_until_settled(
        tmp_path, calendar, at_head, "--backend-url", backend_url, key=api_key
    )
    assert "calsched.scheduler" in modules  # the child did run the daemon
    assert _imported(modules, NEVER + NOT_REMOTE) == []


async def test_run_with_the_embedded_calendar_imports_only_what_it_needs(
    tmp_path: Path, at_head: str
) -> None:
    """Embedded calendar: no Alembic, rich, demo, test fakes or fault injection either."""
    journal = Journal.open(at_head, "host-a")
    try:
        modules = await _run_until_settled(tmp_path, LocalCalendar(journal.engine), at_head)
    finally:
        journal.close()
    assert "calsched.backend.server" in modules
    assert _imported(modules, NEVER) == []


async def test_run_with_tracing_on_imports_the_sdk(tmp_path: Path, at_head: str) -> None:
    """The check above can fail: with ``tracing = true`` the same run loads the SDK."""
    journal = Journal.open(at_head, "host-a")
    try:
        modules = await _run_until_settled(
            tmp_path,
            LocalCalendar(journal.engine),
            at_head,
            extra_env={"CALSCHED_TRACING": "true", "OTEL_TRACES_EXPORTER": "none"},
        )
    finally:
        journal.close()
    assert "opentelemetry.sdk.trace" in modules
