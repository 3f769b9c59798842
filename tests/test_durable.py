"""calsched._durable: flushing a directory after a file is created or renamed in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from calsched._durable import fsync_dir


def test_the_directory_itself_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync is of a descriptor opened on the directory, and that descriptor is closed."""
    synced: list[int] = []
    closed: list[int] = []
    real_fsync, real_close = os.fsync, os.close
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(os, "close", lambda fd: (closed.append(fd), real_close(fd))[1])
    fsync_dir(tmp_path)
    assert len(synced) == 1
    assert closed == synced


def test_a_directory_that_cannot_be_opened_is_let_be(tmp_path: Path) -> None:
    """Nothing to flush where the directory cannot be opened: no error either."""
    fsync_dir(tmp_path / "missing")
