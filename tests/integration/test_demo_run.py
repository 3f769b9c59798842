"""`calsched demo --no-live`, run for real: a daemon subprocess, a SIGKILL, a restart.

The demo runs once for the module (about 20 s); each test checks one thing it promises.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from calsched.demo.scenario import DEMO_SLOTS
from tests.integration.conftest import child_env


@dataclass(frozen=True)
class DemoRun:
    """What one run of the demo left behind."""

    code: int
    stdout: str
    stderr: str
    seconds: float


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """`python -m calsched demo --no-live --seed 7`, with HOME and XDG dirs in a temp dir."""
    home = tmp_path_factory.mktemp("home")
    env = child_env(home, TMPDIR=str(tmp_path_factory.mktemp("tmp")))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "calsched", "demo", "--no-live", "--seed", "7"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    return DemoRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def test_the_demo_succeeds_within_a_minute(demo_run: DemoRun) -> None:
    """Exit status 0, nothing on stderr, well under the 60 s the demo promises."""
    assert demo_run.code == 0, demo_run.stdout[-3000:] + demo_run.stderr
    assert demo_run.stderr == ""
    assert demo_run.seconds < 60


def test_the_daemon_was_killed_and_restarted(demo_run: DemoRun) -> None:
    """The output says the daemon got SIGKILL and a new process answered after it."""
    killed = re.search(r"killed the daemon \(pid (\d+)\) with SIGKILL", demo_run.stdout)
    restarted = re.search(r"daemon restarted \(pid (\d+)\)", demo_run.stdout)
    assert killed is not None, demo_run.stdout
    assert restarted is not None, demo_run.stdout
    assert killed.group(1) != restarted.group(1)
    assert killed.start() < restarted.start()


def test_the_active_slots_came_back(demo_run: DemoRun) -> None:
    """The active slots listed before the kill are listed, in the same states, after it,
    and at least one of them was in progress or paused."""
    before = re.search(r"active before the kill: +(.+)", demo_run.stdout)
    after = re.search(r"active after the restart: +(.+)", demo_run.stdout)
    assert before is not None, demo_run.stdout
    assert after is not None, demo_run.stdout
    held = set(before.group(1).split(", "))
    assert held <= set(after.group(1).split(", "))
    assert any(s.endswith((" paused", " in_progress")) for s in held)
    assert "active slots came back from the journal, in the same state" in demo_run.stdout


def test_the_history_is_printed_from_sql(demo_run: DemoRun) -> None:
    """The final table has every slot's terminal event, the marks, and the summary line."""
    out = demo_run.stdout
    table_at = out.index("slot history (SELECT * FROM slot_timeline ORDER BY seq)")
    table = out[table_at:]
    for s in DEMO_SLOTS:
        assert re.search(rf"{s.slot_id} .*in_progress -> (completed|aborted)", table), s.slot_id
    assert "SIGKILL" in table
    assert "restart" in table
    last = out.strip().splitlines()[-1]
    summary = re.fullmatch(
        r"9 slots: (\d) completed, (\d) aborted; (\d+) backend receipts; 1 hard restart "
        r"\((\d)/(\d) active slots restored\); [\d.]+s",
        last,
    )
    assert summary is not None, last
    completed, aborted, receipts, back, held = map(int, summary.groups())
    assert completed + aborted == 9
    assert back == held >= 1
    # Every slot told the backend in_progress and its end; pauses add two receipts each.
    assert receipts >= 18
    assert receipts % 2 == 0


def test_the_temporary_directory_is_gone(demo_run: DemoRun) -> None:
    """Without --keep, the working directory the demo announced no longer exists."""
    found = re.search(r"working in (\S+)", demo_run.stdout)
    assert found is not None, demo_run.stdout
    assert not Path(found.group(1)).exists()
