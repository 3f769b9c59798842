"""``calsched run`` and ``journal verify`` on a damaged or unusable journal: one line, exit 1.

Each case damages a real journal (a few slots in it), then runs the real commands in a
child process and checks: status 1, exactly one ``error: ...`` line on stderr, no
"daemon started" (never a silent start on empty state), and the database and its
``-wal`` byte for byte as they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from calsched.journal import Journal, TransitionRequest
from calsched.model import Actor, Slot, Trigger, parse
from tests.integration.conftest import free_port

TIMEOUT_S = 30


def make_env(tmp_path: Path, db: Path) -> dict[str, str]:
    """The child's environment: the journal at ``db``, its own secret and a free port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALSCHED_")}
    env.update(
        XDG_DATA_HOME=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        CALSCHED_DATABASE_URL=f"sqlite:///{db}",
        CALSCHED_IDENTIFIER="host-a",
        CALSCHED_CONTROL__SECRET_FILE=str(tmp_path / "control.secret"),
        CALSCHED_CONTROL__PORT=str(free_port()),
    )
    return env


def fill(journal: Journal, first: int, count: int) -> None:
    """Receive ``count`` slots."""
    for n in range(first, first + count):
        slot = parse(Slot, {"id": f"s{n}", "agent_id": f"a{n}", "title": "t" * 300})
        journal.apply(TransitionRequest(slot.id, Trigger.receive, Actor.backend, slot=slot))


def digest(db: Path) -> dict[str, str]:
    """Hashes of the database and its -wal."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (db, Path(f"{db}-wal"))
        if p.exists()
    }


def refuses(env: dict[str, str], db: Path, *args: str) -> str:
    """Run ``calsched *args``; it must stop with one error line and change nothing."""
    before = digest(db)
    done = subprocess.run(
        [sys.executable, "-m", "calsched", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "daemon started" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert digest(db) == before
    return lines[0]


def stale_wal(db: Path) -> None:
    """Put back a -wal from an earlier moment of the journal (after a clean close)."""
    journal = Journal.open(f"sqlite:///{db}", "host-a")
    try:
        fill(journal, 100, 5)
        old = db.with_name("old-wal")
        shutil.copy(f"{db}-wal", old)
        fill(journal, 200, 5)
    finally:
        journal.close()
    shutil.copy(old, f"{db}-wal")


def truncate_half(db: Path) -> None:
    """Cut the file to half its pages."""
    with db.open("r+b") as handle:
        handle.truncate(db.stat().st_size // 8192 * 4096)


def flip_magic(db: Path) -> None:
    """Invert the first header byte."""
    data = bytearray(db.read_bytes())
    data[0] ^= 0xFF
    db.write_bytes(bytes(data))


def not_sqlite(db: Path) -> None:
    """Replace the journal with a CSV file."""
    db.write_text("slot,agent\ns1,bob\n" * 300, encoding="utf-8")


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (truncate_half, "is damaged: truncated"),
    "header flipped": (flip_magic, "is not a SQLite database"),
    "stale wal": (stale_wal, "-wal does not continue it"),
    "not sqlite": (not_sqlite, "is not a SQLite database"),
}


@pytest.fixture
def journal_file(tmp_path: Path) -> Path:
    """A closed journal with 20 slots, in a directory of its own."""
    (tmp_path / "j").mkdir()
    db = tmp_path / "j" / "calsched.db"
    journal = Journal.open(f"sqlite:///{db}", "host-a", upgrade=True)
    fill(journal, 0, 20)
    journal.close()
    return db


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", [("run",), ("journal", "verify")], ids=["run", "verify"])
def test_damaged_journal_is_one_line_and_untouched(
    tmp_path: Path, journal_file: Path, case: str, command: tuple[str, ...]
) -> None:
    """Each damage stops the command in one line naming it; nothing is written."""
    damage, expected = CASES[case]
    damage(journal_file)
    line = refuses(make_env(tmp_path, journal_file), journal_file, *command)
    assert expected in line
    assert str(journal_file) in line


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """Make ``directory`` unwritable for this process, root included (chattr +i)."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(0o700)
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("root ignores mode bits and chattr (e2fsprogs) is not installed")
    made = subprocess.run([chattr, "+i", str(directory)], capture_output=True, check=False)
    if made.returncode != 0:  # a filesystem without the immutable flag (tmpfs, overlay)
        pytest.skip(f"cannot make a directory unwritable for root here: {made.stderr!r}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(directory)], check=True)


@pytest.mark.parametrize("command", [("run",), ("journal", "verify")], ids=["run", "verify"])
def test_unwritable_directory_is_one_line(
    tmp_path: Path, journal_file: Path, command: tuple[str, ...]
) -> None:
    """SQLite needs to create -wal and -shm beside the journal: said before it tries."""
    with unwritable(journal_file.parent):
        line = refuses(make_env(tmp_path, journal_file), journal_file, *command)
    assert line == (
        f"error: cannot write {journal_file} or its directory (SQLite keeps its -wal and "
        "-shm beside the database); fix the permissions"
    )
