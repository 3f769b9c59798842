"""Making a rename or a new file's directory entry survive a crash."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir"]


def fsync_dir(directory: Path) -> None:
    """Flush ``directory`` itself, so that an entry just created or renamed in it (a
    secret handed out, an export about to be relied on) is on disk: the entry is the
    directory's data, not the file's. Platforms and filesystems that cannot open or
    fsync a directory are let be: there is nothing more to do on them."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - filesystems that refuse fsync on a directory
        pass
    finally:
        os.close(fd)
