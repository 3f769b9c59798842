"""The checks after a drain: what the driver saw against the journal and the backend.

Everything here reads files and the rig's records, with the daemon stopped:

- **lost**: an acknowledged tool call (answered 200) with no matching agent event, or a
  slot the backend handed to the daemon with no ``receive`` event;
- **torn**: an event without its projection (the slot row, at or past its seq) or, when
  it notifies the backend, without its outbox row;
- ``PRAGMA integrity_check`` and ``calsched journal verify``;
- **delivery**: after Idempotency-Key dedupe, each outbox row delivered and received
  exactly once; never two terminal statuses for one attempt;
- **extra wakes**: a ``(slot, attempt)`` woken more than once is explained only when its
  wake was settled by recovery (it was caught in ``dispatching`` by a kill).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calsched.backend.receipts import Receipt
from calsched.journal.transitions import notifies_backend
from calsched.model import TERMINAL_STATES, SlotState, Trigger

__all__ = ["Findings", "audit", "integrity", "rows", "snapshot", "verify"]


@dataclass
class Findings:
    """One rig's (or the sum of all rigs') figures; every list should end up empty."""

    acknowledged: int = 0
    listed: int = 0
    events: int = 0
    lost: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    undelivered: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    double_terminal: list[str] = field(default_factory=list)
    unexplained_wakes: list[str] = field(default_factory=list)
    extra_wakes: int = 0
    redelivered_posts: int = 0

    def add(self, other: Findings) -> None:
        """Sum ``other`` into this one."""
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)

    @property
    def ok(self) -> bool:
        """Whether every promise held."""
        return not (
            self.lost
            or self.torn
            or self.corrupt
            or self.undelivered
            or self.duplicates
            or self.double_terminal
            or self.unexplained_wakes
        )

    def problems(self) -> str:
        """The first few of every failed check, for an assertion message."""
        lists = ("lost", "torn", "corrupt", "undelivered", "duplicates", "double_terminal")
        parts = [f"{n}: {getattr(self, n)[:5]}" for n in lists if getattr(self, n)]
        if self.unexplained_wakes:
            parts.append(f"unexplained_wakes: {self.unexplained_wakes[:5]}")
        return "; ".join(parts)


def rows(db: Path, query: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def snapshot(db: Path) -> tuple[list[tuple[Any, ...]], ...]:
    """Every row of the events, the slots projection and the outbox, in a fixed order."""
    return tuple(
        rows(db, f"SELECT * FROM {table} ORDER BY {order}")
        for table, order in (
            ("events", "seq"),
            ("slots", "identifier, slot_id"),
            ("outbox", "id"),
        )
    )


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check``: ``"ok"`` or what SQLite found."""
    return "; ".join(str(r[0]) for r in rows(db, "PRAGMA integrity_check"))


def verify(config: Path) -> str | None:
    """``calsched journal verify`` on the daemon's config; ``None`` when it says ok."""
    argv = [sys.executable, "-m", "calsched", "--config", str(config), "journal", "verify"]
    done = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=60)
    if done.returncode == 0 and json.loads(done.stdout)["ok"]:
        return None
    return f"journal verify: exit {done.returncode}: {done.stdout[-500:]}{done.stderr[-500:]}"


def audit(
    db: Path,
    config: Path,
    *,
    acks: Iterable[tuple[str, int, str]],
    listed: Iterable[str],
    receipts: Iterable[Receipt],
    posts: Mapping[str, int],
    wakes: Mapping[tuple[str, int], int],
) -> Findings:
    """Check one stopped daemon's journal against what was acknowledged and delivered."""
    found = Findings()
    events = rows(
        db, "SELECT seq, slot_id, attempt, kind, actor, state_to FROM events ORDER BY seq"
    )
    found.events = len(events)
    _check_lost(found, events, list(acks), list(listed))
    _check_torn(found, db, events)
    state = integrity(db)
    if state != "ok":
        found.corrupt.append(f"integrity_check: {state}")
    problem = verify(config)
    if problem is not None:
        found.corrupt.append(problem)
    _check_delivery(found, db, list(receipts), posts)
    _check_wakes(found, events, wakes)
    return found


def _check_lost(
    found: Findings,
    events: list[tuple[Any, ...]],
    acks: list[tuple[str, int, str]],
    listed: list[str],
) -> None:
    by_agent = Counter((s, a, k) for _, s, a, k, actor, _ in events if actor == "agent")
    wanted = Counter(acks)
    found.acknowledged = len(acks) + len(listed)
    found.listed = len(listed)
    for key, count in wanted.items():
        if by_agent[key] < count:
            found.lost.append(f"acknowledged {key} x{count}, journaled x{by_agent[key]}")
    received = {s for _, s, _, k, _, _ in events if k == Trigger.receive.value}
    found.lost.extend(f"listed {s} never received" for s in listed if s not in received)


def _check_torn(found: Findings, db: Path, events: list[tuple[Any, ...]]) -> None:
    last = dict(rows(db, "SELECT slot_id, last_seq FROM slots"))
    boxed = {seq for (seq,) in rows(db, "SELECT event_seq FROM outbox")}
    for seq, slot_id, _, kind, _, state_to in events:
        if last.get(slot_id, -1) < seq:
            found.torn.append(f"event {seq} ({kind} {slot_id}) without its projection")
        needs_row = notifies_backend(Trigger(kind), SlotState(state_to))
        if needs_row and seq not in boxed:
            found.torn.append(f"event {seq} ({kind} {slot_id}) without its outbox row")
    seqs = {e[0] for e in events}
    found.torn.extend(f"outbox row for missing event {s}" for s in boxed - seqs)


def _check_delivery(
    found: Findings, db: Path, receipts: list[Receipt], posts: Mapping[str, int]
) -> None:
    boxed = rows(db, "SELECT idempotency_key, slot_id, status, delivered_at, dead_at FROM outbox")
    keys = Counter(r.idempotency_key for r in receipts)
    for key, slot_id, status, delivered_at, dead_at in boxed:
        if delivered_at is None or dead_at is not None or keys[key] == 0:
            found.undelivered.append(f"{slot_id} {status} (key {key})")
    ours = {r[0] for r in boxed}
    found.duplicates.extend(f"receipt {k} x{n}" for k, n in keys.items() if n > 1)
    found.duplicates.extend(f"receipt {k} for no outbox row" for k in keys if k not in ours)
    terminal = {s.value for s in TERMINAL_STATES}
    ends = Counter((r.slot_id, r.attempt) for r in receipts if r.status.value in terminal)
    found.double_terminal.extend(f"{k} {n} terminal statuses" for k, n in ends.items() if n > 1)
    found.redelivered_posts = sum(posts.values()) - len(posts)


def _check_wakes(
    found: Findings, events: list[tuple[Any, ...]], wakes: Mapping[tuple[str, int], int]
) -> None:
    settled = {Trigger.woke.value, Trigger.wake_failed.value}
    by_recovery = {
        (s, a) for _, s, a, k, actor, _ in events if k in settled and actor == "recovery"
    }
    for key, count in wakes.items():
        if count > 1:
            found.extra_wakes += count - 1
            if key not in by_recovery:
                found.unexplained_wakes.append(f"{key} woken {count}x, never caught dispatching")
