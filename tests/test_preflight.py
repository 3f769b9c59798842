"""Damaged journal files are refused before SQLite opens them, and left unchanged.

Each case builds a real journal, damages it the way an operator or a disk would, and
checks that :meth:`Journal.open` (with ``upgrade``, as ``calsched run`` opens it) raises
one line of :class:`JournalError`, never starts on empty state, and leaves the database
and its ``-wal`` byte for byte as they were. A crash image (the files copied while a
writer had them open) must still open, with every event.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from calsched.errors import JournalError
from calsched.journal import Journal, TransitionRequest
from calsched.journal.preflight import check_sqlite_file
from calsched.journal.schema import events
from calsched.model import Actor, Slot, Trigger, parse


def fill(journal: Journal, first: int, count: int) -> None:
    """Receive ``count`` slots, one transaction each (bodies big enough to fill pages)."""
    for n in range(first, first + count):
        slot = parse(Slot, {"id": f"s{n}", "agent_id": f"a{n}", "title": "t" * 300})
        journal.apply(TransitionRequest(slot.id, Trigger.receive, Actor.backend, slot=slot))


def url(path: Path) -> str:
    """The SQLite URL of ``path``."""
    return f"sqlite:///{path}"


def copy_open(src: Path, dst: Path) -> None:
    """Copy a journal and its -wal as a crash would leave them (the writer still open)."""
    shutil.copy(src, dst)
    shutil.copy(f"{src}-wal", f"{dst}-wal")


def closed_journal(path: Path, count: int, first: int = 0) -> Path:
    """A journal of ``count`` slots, closed cleanly (so no -wal is left)."""
    journal = Journal.open(url(path), "host-a", upgrade=True)
    fill(journal, first, count)
    journal.close()
    assert not Path(f"{path}-wal").exists()
    return path


def digest(path: Path) -> dict[str, str]:
    """Hashes of the database and its -wal (the -shm is an index SQLite rebuilds)."""
    found = {}
    for p in (path, Path(f"{path}-wal")):
        if p.exists():
            found[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def refused(path: Path) -> str:
    """Open as ``calsched run`` would; return the one-line error; check nothing changed."""
    before = digest(path)
    with pytest.raises(JournalError) as info:
        Journal.open(url(path), "host-a", upgrade=True)
    assert digest(path) == before
    message = str(info.value)
    assert "\n" not in message
    return message


def flip(path: Path, offset: int) -> None:
    """Invert one byte of the file."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, size: int) -> None:
    """Cut the file to ``size`` bytes."""
    with path.open("r+b") as handle:
        handle.truncate(size)


Damage = Callable[[Path], None]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda p: truncate(p, 0), "the file is empty"),
        (lambda p: truncate(p, 50), "truncated to 50 bytes"),
        (lambda p: truncate(p, 4096 * 3 + 100), "not a whole number of 4096-byte pages"),
        (lambda p: truncate(p, 4096 * 3), "its header counts"),
        (lambda p: flip(p, 0), "is not a SQLite database"),
        (lambda p: flip(p, 16), "its header is damaged"),
        (lambda p: flip(p, 18), "its header is damaged"),
        (lambda p: flip(p, 21), "its header is damaged"),
        (lambda p: p.write_bytes(b"name,when\nalice,9\n" * 400), "is not a SQLite database"),
    ],
    ids=[
        "truncated to 0",
        "truncated into the header",
        "truncated mid-page",
        "truncated at a page",
        "magic flipped",
        "page size flipped",
        "write version flipped",
        "payload fraction flipped",
        "not sqlite",
    ],
)
def test_a_damaged_file_is_refused_and_left_unchanged(
    tmp_path: Path, damage: Damage, expected: str
) -> None:
    """Each damage is one line naming it; nothing is written."""
    path = closed_journal(tmp_path / "j.db", 60)
    damage(path)
    message = refused(path)
    assert expected in message
    assert str(path) in message


def test_a_crash_image_opens_with_every_event(tmp_path: Path) -> None:
    """The files as kill -9 leaves them (part checkpointed, part in the -wal) are fine."""
    live = Journal.open(url(tmp_path / "live.db"), "host-a", upgrade=True)
    try:
        fill(live, 0, 400)  # past the 1000-page auto-checkpoint: both files hold events
        copy_open(tmp_path / "live.db", tmp_path / "crash.db")
    finally:
        live.close()
    assert (tmp_path / "crash.db-wal").stat().st_size > 0
    check_sqlite_file(tmp_path / "crash.db")
    journal = Journal.open(url(tmp_path / "crash.db"), "host-a", upgrade=True)
    try:
        with journal.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 400
        assert journal.verify() == []
    finally:
        journal.close()


def test_a_stale_wal_is_refused(tmp_path: Path) -> None:
    """A -wal from an earlier moment of the same journal would roll it back: refused."""
    path = tmp_path / "j.db"
    journal = Journal.open(url(path), "host-a", upgrade=True)
    try:
        fill(journal, 0, 50)
        shutil.copy(f"{path}-wal", tmp_path / "old-wal")
        fill(journal, 50, 50)
    finally:
        journal.close()  # checkpointed: the file alone holds all 100
    shutil.copy(tmp_path / "old-wal", f"{path}-wal")
    assert "-wal does not continue it (stale or from another journal" in refused(path)


def test_a_foreign_wal_is_refused(tmp_path: Path) -> None:
    """Another journal's -wal beside this one would be applied to it: refused."""
    path = closed_journal(tmp_path / "j.db", 30)
    other = Journal.open(url(tmp_path / "other.db"), "host-a", upgrade=True)
    try:
        fill(other, 1000, 30)
        shutil.copy(tmp_path / "other.db-wal", f"{path}-wal")
    finally:
        other.close()
    assert "-wal does not continue it" in refused(path)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda w: truncate(w, 20), "its -wal is truncated to 20 bytes"),
        (lambda w: flip(w, 0), "is not a SQLite write-ahead log"),
        (lambda w: flip(w, 13), "the header of j.db-wal is damaged"),
    ],
    ids=["wal truncated", "wal magic flipped", "wal header flipped"],
)
def test_a_damaged_wal_is_refused(tmp_path: Path, damage: Damage, expected: str) -> None:
    """A -wal that is not a valid one is refused before SQLite ignores or resets it."""
    path = tmp_path / "j.db"
    live = Journal.open(url(path), "host-a", upgrade=True)
    try:
        fill(live, 0, 20)
        copy_open(path, tmp_path / "c.db")
    finally:
        live.close()
    crash = tmp_path / "c.db"
    crash.rename(path)
    Path(f"{crash}-wal").rename(f"{path}-wal")
    damage(Path(f"{path}-wal"))
    assert expected in refused(path)


def test_a_wal_with_other_pages_is_refused(tmp_path: Path) -> None:
    """A -wal written with another page size belongs to another database."""
    path = closed_journal(tmp_path / "j.db", 10)
    header = bytearray(32)
    struct.pack_into(">4I", header, 0, 0x377F0682, 3007000, 1024, 0)
    from calsched.journal.preflight import _checksum

    struct.pack_into(">2I", header, 24, *_checksum(bytes(header[:24]), big_endian=False))
    Path(f"{path}-wal").write_bytes(bytes(header) + b"\0" * 1048)
    assert "belongs to another database (1024-byte pages, not 4096)" in refused(path)


def test_a_missing_file_is_fine(tmp_path: Path) -> None:
    """A new journal is created: nothing to check."""
    check_sqlite_file(tmp_path / "new.db")
