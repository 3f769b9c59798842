"""Checks of a SQLite journal file before SQLite opens it for writing.

SQLite is forgiving where calsched must not be: it takes an empty file for a new
database (so a journal truncated to nothing would start on empty state), applies any
well-formed ``-wal`` it finds beside the file (a stale or foreign one included), and on
the last close checkpoints that ``-wal`` into the database. So before the engine
connects, :func:`check_sqlite_file` reads the header and the ``-wal`` header itself and,
when a ``-wal`` holds frames, runs ``PRAGMA quick_check`` on a read-only connection,
which neither writes the database nor checkpoints, and checks that the ``-wal`` only
adds to the file: the first and last events the file holds on its own must still be
there, unchanged, read through the ``-wal`` (events are append-only and carry a unique
``event_id``). A stale ``-wal`` (older than the file) loses the last of them; a foreign
one changes them. Anything wrong is one :class:`~calsched.errors.JournalError` line,
and the files are left as they were.

A clean shutdown leaves no ``-wal``, so the usual start costs two small reads and a
``stat``; only a start after a crash pays for the quick check.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from pathlib import Path

from calsched.errors import JournalError

__all__ = ["check_sqlite_file"]

_MAGIC = b"SQLite format 3\x00"
_WAL_MAGICS = (0x377F0682, 0x377F0683)
_WAL_VERSION = 3007000
_HEADER = 100
_WAL_HEADER = 32


def check_sqlite_file(path: Path) -> None:
    """Raise :class:`JournalError` in one line if the journal at ``path`` is not fit to
    open: damaged, truncated, not SQLite, with a foreign ``-wal``, or in a directory
    calsched cannot write. A missing file is fine (it is created new)."""
    if not path.exists():
        return
    if not os.access(path.parent, os.W_OK | os.X_OK) or not os.access(path, os.R_OK | os.W_OK):
        raise JournalError(
            f"cannot write {path} or its directory (SQLite keeps its -wal and -shm beside "
            "the database); fix the permissions"
        )
    size = path.stat().st_size
    wal = Path(f"{path}-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    with path.open("rb") as handle:
        header = handle.read(_HEADER)
    if size == 0:
        raise _damaged(path, "the file is empty (truncated?); remove it to start a new journal")
    if len(header) < _HEADER:
        raise _damaged(path, f"truncated to {size} bytes, shorter than a SQLite header")
    if header[:16] != _MAGIC:
        raise JournalError(f"{path} is not a SQLite database; calsched leaves it as it is")
    page = _page_size(header)
    if page is None or header[18] not in (1, 2) or header[19] not in (1, 2):
        raise _damaged(path, "its header is damaged")
    if header[21:24] != b"\x40\x20\x20":
        raise _damaged(path, "its header is damaged")
    if size % page:
        raise _damaged(path, f"truncated: {size} bytes is not a whole number of {page}-byte pages")
    if wal_size == 0:
        pages = _header_pages(header)
        if pages is not None and size < pages * page:
            raise _damaged(
                path, f"truncated: its header counts {pages} pages, the file holds {size // page}"
            )
        return
    _check_wal(path, wal, page, wal_size)
    _quick_check(path)
    _check_wal_continues_file(path)


def _damaged(path: Path, why: str) -> JournalError:
    return JournalError(
        f"the journal {path} is damaged: {why}; it was not changed (restore it from a backup)"
    )


def _page_size(header: bytes) -> int | None:
    (raw,) = struct.unpack(">H", header[16:18])
    page = 65536 if raw == 1 else raw
    if page < 512 or page > 65536 or page & (page - 1):
        return None
    return page


def _header_pages(header: bytes) -> int | None:
    """The in-header page count, when SQLite marks it valid (offset 92 == offset 24)."""
    if header[92:96] != header[24:28]:
        return None
    (pages,) = struct.unpack(">I", header[28:32])
    return pages or None


def _check_wal(path: Path, wal: Path, page: int, wal_size: int) -> None:
    with wal.open("rb") as handle:
        head = handle.read(_WAL_HEADER)
    if len(head) < _WAL_HEADER:
        raise _damaged(path, f"its -wal is truncated to {wal_size} bytes")
    magic, version, wal_page, _seq, _s1, _s2, c1, c2 = struct.unpack(">8I", head)
    if magic not in _WAL_MAGICS or version != _WAL_VERSION:
        raise _damaged(path, f"{wal.name} is not a SQLite write-ahead log")
    if _checksum(head[:24], big_endian=bool(magic & 1)) != (c1, c2):
        raise _damaged(path, f"the header of {wal.name} is damaged")
    if wal_page != page:
        raise _damaged(
            path,
            f"{wal.name} belongs to another database ({wal_page}-byte pages, not {page}); "
            "move it away only if you know the database is complete without it",
        )


def _checksum(data: bytes, *, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes)."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    s1 = s2 = 0
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
        s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
    return s1, s2


def _quick_check(path: Path) -> None:
    """``PRAGMA quick_check`` through the ``-wal``, on a connection that cannot write."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise _damaged(path, f"it cannot be opened: {exc}") from None
    try:
        found = [row[0] for row in conn.execute("PRAGMA quick_check(1)")]
    except sqlite3.Error as exc:
        raise _damaged(path, f"read through its -wal: {exc}") from None
    finally:
        conn.close()
    if found != ["ok"]:
        first = str(found[0]).splitlines()[0] if found else "no answer"
        raise _damaged(path, f"read through its -wal, it fails its check: {first}")


_ENDS = (
    "SELECT seq, event_id FROM events WHERE seq IN "
    "((SELECT MIN(seq) FROM events), (SELECT MAX(seq) FROM events)) ORDER BY seq"
)


def _check_wal_continues_file(path: Path) -> None:
    """The ``-wal`` must extend the file's own history, never rewrite or shorten it."""
    uri = path.resolve().as_uri()
    try:
        # immutable: the file alone, without the -wal, without locks or writes.
        alone = _read(f"{uri}?immutable=1", _ENDS, ())
    except sqlite3.Error:
        return  # the file alone is not readable (never checkpointed, or mid-checkpoint)
    if not alone:
        return
    seqs = tuple(seq for seq, _id in alone)
    try:
        through = _read(
            f"{uri}?mode=ro",
            "SELECT seq, event_id FROM events WHERE seq IN (?, ?) ORDER BY seq",
            (seqs[0], seqs[-1]),
        )
    except sqlite3.Error as exc:
        raise _damaged(path, f"read through its -wal: {exc}") from None
    if through != alone:
        raise _damaged(
            path,
            f"{path.name}-wal does not continue it (stale or from another journal: the file "
            f"alone holds events {seqs[0]}..{seqs[-1]}, read through the -wal they differ); "
            "move the -wal away only if the file alone is the journal you want",
        )


def _read(uri: str, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(uri, uri=True)
    try:
        return [tuple(row) for row in conn.execute(sql, params)]
    finally:
        conn.close()
