"""The first run, as a newcomer follows the README: no config file, no agent host.

A fresh HOME and XDG dirs, none of the runner's ``CALSCHED_*`` (only the control port is
set, so parallel test runs do not share 8765). ``calsched run`` with its default 30 s
heartbeat; ``calsched slots add --agent bob --at now`` says a running daemon picks it up;
the wake is printed on the daemon's terminal within a few seconds (the embedded calendar's
watcher, not the next beat), with a command that completes the slot; running that command
works with no token given (the CLI reads the secret file the daemon made); the embedded
calendar hears the completion.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.integration.conftest import child_env, free_port

#: How long a wake may take after `slots add` (the heartbeat interval is 30 s).
WAKE_WITHIN_S = 5.0
CALSCHED = [sys.executable, "-m", "calsched"]


def wait_for(what: str, check: Callable[[], bool], timeout: float, log: Path) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` with the daemon's output."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not seen in {timeout:g}s; daemon output:\n{log.read_text()}")
        time.sleep(0.05)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, subprocess.Popen[bytes]]]:
    """``calsched run`` with no config in a fresh HOME: its environment, output, process."""
    env = child_env(
        tmp_path / "home", CALSCHED_CONTROL__PORT=str(free_port()), PYTHONUNBUFFERED="1"
    )
    out = tmp_path / "run.out"
    stream: IO[bytes] = out.open("wb")
    proc = subprocess.Popen([*CALSCHED, "run"], stdout=stream, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for("daemon started", lambda: "daemon started" in out.read_text(), 30, out)
        yield env, out, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        stream.close()


def calsched(env: dict[str, str], *args: str) -> str:
    """Run the CLI as the user would in a second terminal; its stdout (exit 0 required)."""
    done = subprocess.run([*CALSCHED, *args], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, f"{args}: {done.stderr}{done.stdout}"
    return done.stdout


def test_the_readme_first_steps_wake_and_finish_a_slot(
    daemon: tuple[dict[str, str], Path, subprocess.Popen[bytes]],
) -> None:
    """run; slots add --at now; the wake is printed within seconds; its command completes it."""
    env, out, proc = daemon
    added = calsched(env, "slots", "add", "--agent", "bob", "--at", "now")
    added_at = time.monotonic()
    slot_id = re.search(r"added slot (\S+) for agent bob", added)
    assert slot_id is not None, added
    assert "the running daemon" in added
    assert "picks it up within ~1 s" in added
    wait_for("the printed wake", lambda: "when done:" in out.read_text(), WAKE_WITHIN_S, out)
    assert time.monotonic() - added_at < WAKE_WITHIN_S
    shown = out.read_text()
    assert f"=== wake: agent bob, slot {slot_id[1]}, attempt 1" in shown
    command = re.search(r"--- when done: (.+)", shown)
    assert command is not None
    argv = shlex.split(command[1])
    assert argv[:2] == ["calsched", "complete"]
    summary = argv.index("--summary") + 1
    argv[summary] = "report sent"
    completed = calsched(env, *argv[1:])
    assert f"slot {slot_id[1]} of agent bob: completed" in completed
    assert f"{slot_id[1]} " in calsched(env, "history")  # read back from the journal

    def told_the_calendar() -> bool:
        listed = json.loads(calsched(env, "slots", "list", "--json"))
        return [s["status"] for s in listed] == ["completed"]

    wait_for("the calendar hearing the completion", told_the_calendar, 15, out)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    log = out.read_text()
    for line in ("slot received", "slot dispatched", "slot woken", "tool call", "outbox delivered"):
        assert f"] {line} [calsched.scheduler]" in log, line
    assert "uvicorn.error" not in log
