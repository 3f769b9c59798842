"""The eventsourcing library (9.5) as a contender: one aggregate per slot, one event per save.

Its SQLite recorder opens connections in autocommit mode and switches a file database to
WAL; it sets no ``synchronous`` level, so it runs with SQLite's compiled default (FULL on
the builds seen so far). "Same durability" is checked, not assumed: :func:`open_app` reads
the pragmas back from a pooled connection and refuses to compare unless they are WAL and
FULL, the journal's settings in these benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

__all__ = ["SlotAggregate", "SlotApp", "open_app", "pragmas"]


class SlotAggregate(Aggregate):
    """A slot with the lifecycle's moves, as eventsourcing models them (no checks)."""

    @event("Received")
    def __init__(self, slot_id: str, agent_id: str) -> None:
        self.slot_id = slot_id
        self.agent_id = agent_id
        self.state = "pending"

    @event("Dispatched")
    def dispatch(self) -> None:
        """pending -> dispatching."""
        self.state = "dispatching"

    @event("Woke")
    def woke(self) -> None:
        """dispatching -> in_progress."""
        self.state = "in_progress"

    @event("Paused")
    def pause(self) -> None:
        """in_progress -> paused."""
        self.state = "paused"

    @event("Resumed")
    def resume(self) -> None:
        """paused -> in_progress."""
        self.state = "in_progress"

    @event("Completed")
    def complete(self, summary: str) -> None:
        """-> completed."""
        self.state = "completed"
        self.summary = summary


class SlotApp(Application[UUID]):
    """An application holding slot aggregates; nothing but save and get."""

    is_snapshotting_enabled = False


_SYNC = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def open_app(path: Path) -> SlotApp:
    """An application on a SQLite file at ``path``; refused unless it runs WAL and FULL."""
    # The library reads its settings from env=, so nothing global changes.
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
    app = SlotApp(env=env)
    found = pragmas(app)
    if found != {"journal_mode": "wal", "synchronous": "FULL"}:
        app.close()
        raise RuntimeError(f"eventsourcing runs with {found}, not WAL and FULL: not comparable")
    return app


def pragmas(app: SlotApp) -> dict[str, str]:
    """``journal_mode`` and ``synchronous`` of a connection from the app's own pool."""
    datastore: Any = getattr(app.factory, "datastore")  # noqa: B009 - SQLite factory only
    with datastore.transaction(commit=False) as cursor:
        cursor.execute("PRAGMA journal_mode")
        mode = str(cursor.fetchone()[0]).lower()
        cursor.execute("PRAGMA synchronous")
        sync = int(cursor.fetchone()[0])
    return {"journal_mode": mode, "synchronous": _SYNC.get(sync, str(sync))}
