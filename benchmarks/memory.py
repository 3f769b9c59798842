"""f. Memory per active slot: what the scheduler holds after recovery, by tracemalloc.

calsched: a journal is fabricated with N ``in_progress`` slots (one per agent), then a
fresh :class:`~calsched.scheduler.Scheduler` over it runs :meth:`recover`. The figure is
the traced memory still allocated after ``recover`` returned and the garbage collector
ran, minus what was allocated before it started, divided by N. What that counts: the
live view (every object reachable from it: views, slots, strings, datetimes, dict
entries) and whatever else recovery leaves behind for good, such as SQLAlchemy's
statement cache and the connection pool, a constant that vanishes in the per-slot figure
at N = 100,000. What it does not count: the interpreter, imported modules, the journal
object made before the snapshot.

Seed-shaped: what ``seed/scheduler.go`` keeps per active slot, as plain Python dicts with
the same field values (parsed from JSON, so no string is shared with anything else): an
``ActiveSlot`` dict (the slot's fields, ``started_at``, ``last_heartbeat`` as datetimes,
the state as a shared constant, as Go's is) in ``active_by_slot_id``, and the same object
again in ``active_by_agent_id``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import tracemalloc
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import BenchConfig, Row, interleaved, median, progress
from calsched.journal import Journal
from calsched.model import SlotState, format_time
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost

__all__ = ["calsched_bytes", "run", "seed_bytes", "seed_wire"]

BENCH = "f. memory"
IDENTIFIER = "bench-memory"
TARGET = 1.2 * 1024


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def calsched_bytes(url: str, n: int) -> float:
    """Bytes per active slot the scheduler holds after :meth:`Scheduler.recover`."""
    journal = Journal.open(url, IDENTIFIER)
    scheduler = Scheduler(
        SchedulerSettings(identifier=IDENTIFIER), journal, InMemoryBackend(), InMemoryHost()
    )

    async def recover() -> None:
        await scheduler.recover()

    try:
        tracemalloc.start()
        before = _traced()
        asyncio.run(recover())
        after = _traced()
        held = len(scheduler.active())
        if held != n:
            raise RuntimeError(f"recovery holds {held} slots, not {n}")
    finally:
        tracemalloc.stop()
        journal.close()
    return (after - before) / n


def seed_wire(url: str) -> str:
    """The active slots' fields as JSON: what the seed-shaped dicts are parsed from."""
    journal = Journal.open(url, IDENTIFIER)
    try:
        views = journal.load_active()
    finally:
        journal.close()
    return json.dumps(
        [
            {
                "slot": v.slot.to_wire(),
                "started_at": format_time(v.started_at or v.updated_at),
                "last_heartbeat": format_time(v.updated_at),
            }
            for v in views
        ]
    )


def _seed_maps(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    by_slot: dict[str, Any] = {}
    by_agent: dict[str, Any] = {}
    for item in json.loads(text):
        slot = item["slot"]
        if slot.get("scheduled_at"):
            slot["scheduled_at"] = datetime.fromisoformat(slot["scheduled_at"])
        act = {
            "slot": slot,
            "started_at": datetime.fromisoformat(item["started_at"]),
            "last_heartbeat": datetime.fromisoformat(item["last_heartbeat"]),
            "state": SlotState.in_progress,
        }
        by_slot[slot["id"]] = act
        by_agent[slot["agent_id"]] = act
    return by_slot, by_agent


def seed_bytes(text: str, n: int) -> float:
    """Bytes per active slot of the seed's two maps, built from ``text``."""
    try:
        tracemalloc.start()
        before = _traced()
        maps = _seed_maps(text)
        after = _traced()
    finally:
        tracemalloc.stop()
    if len(maps[0]) != n:
        raise RuntimeError(f"the seed-shaped maps hold {len(maps[0])} slots, not {n}")
    return (after - before) / n


def run(cfg: BenchConfig) -> list[Row]:
    """B per active slot at ``cfg.size(5_000, 100_000)`` slots, calsched vs seed-shaped."""
    from benchmarks.fabricate import fabricate

    n = cfg.size(5_000, 100_000)
    workdir = cfg.workdir / "memory"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    url = f"sqlite:///{Path(workdir) / 'journal.db'}"
    progress(f"memory: fabricating {n:,} active slots")
    fabricate(url, IDENTIFIER, active=n, history_events=0)
    text = seed_wire(url)
    samples = interleaved(
        cfg.repeats,
        {"calsched": lambda: calsched_bytes(url, n), "seed": lambda: seed_bytes(text, n)},
    )
    shutil.rmtree(workdir, ignore_errors=True)
    value = median(samples["calsched"])
    return [
        Row(
            bench=BENCH,
            case="calsched live view after recover()",
            size=f"{n:,} active slots",
            unit="B/slot",
            value=value,
            higher_is_better=False,
            compare="seed-shaped dicts",
            compare_value=median(samples["seed"]),
            target="<= 1.2 KiB/slot",
            met=value <= TARGET,
            samples=samples["calsched"],
            note="tracemalloc, after gc; includes recovery's constant leftovers (caches)",
        )
    ]
