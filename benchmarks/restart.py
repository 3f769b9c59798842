"""d. Restart: from start to the first heartbeat sent, against the size of the history.

Journals are fabricated (:func:`benchmarks.fabricate.fabricate`) with N ``in_progress``
slots and H events of finished slots before them (so the journal holds ``3 N + H``
events). Two ways to start:

- in-process: ``Journal.open`` (with ``upgrade=True``, as ``calsched run`` does) and
  ``Scheduler(...).start()``, until a small backend fake records the first heartbeat;
- as a process: ``python -m calsched --config … run`` against a loopback stub backend
  (:mod:`benchmarks.loopback`), from spawning it to the stub receiving the first beat;
  this includes the interpreter's start and every import. The process is then stopped
  with SIGTERM.

The histories' medians are interleaved round by round; the headline is the ratio of the
largest history to the smallest (target: within 10%), and the process time (target:
under 0.8 s).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from benchmarks.common import BenchConfig, Row, interleaved, median, progress
from benchmarks.loopback import Daemon, Stubs
from calsched.journal import Journal
from calsched.model import HeartbeatRequest, HeartbeatResponse, RejectedSlot, SlotUpdate
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryHost

__all__ = ["FirstBeat", "fabricated", "restart_in_process", "restart_process", "run"]

BENCH = "d. restart"
IDENTIFIER = "bench-restart"
#: The longest a start may take before it is reported as not finished.
CAP_S = 120.0


class FirstBeat:
    """A backend that records ``perf_counter()`` at the first heartbeat and fires nothing."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.arrived = asyncio.Event()

    async def heartbeat(
        self, request: HeartbeatRequest
    ) -> tuple[HeartbeatResponse, list[RejectedSlot]]:
        """Record the first arrival; answer with nothing to fire."""
        if self.at is None:
            self.at = time.perf_counter()
            self.arrived.set()
        return HeartbeatResponse(), []

    async def send_status(self, slot_id: str, update: SlotUpdate, idempotency_key: str) -> None:
        """Acknowledge."""

    async def aclose(self) -> None:
        """Nothing to release."""


def fabricated(workdir: Path, active: int, history: int) -> str:
    """A SQLite journal with ``active`` live slots and ``history`` finished events."""
    from benchmarks.fabricate import fabricate

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"restart-{active}-{history}.db"
    url = f"sqlite:///{path}"
    if not path.exists():
        progress(f"restart: fabricating {active:,} active + {history:,} history events")
        fabricate(url, IDENTIFIER, active=active, history_events=history)
    return url


async def _start_once(url: str) -> float:
    backend = FirstBeat()
    start = time.perf_counter()
    journal = await asyncio.to_thread(Journal.open, url, IDENTIFIER, upgrade=True)
    scheduler = Scheduler(
        SchedulerSettings(identifier=IDENTIFIER), journal, backend, InMemoryHost()
    )
    try:
        await scheduler.start()
        async with asyncio.timeout(CAP_S):
            await backend.arrived.wait()
        assert backend.at is not None
        return backend.at - start
    finally:
        await scheduler.stop()
        journal.close()


def restart_in_process(url: str) -> float:
    """Seconds from ``Journal.open`` to the first heartbeat, in this process."""
    return asyncio.run(_start_once(url))


def restart_process(url: str, workdir: Path) -> float:
    """Seconds from spawning ``calsched run`` to the stub receiving its first heartbeat."""
    stubs = Stubs().start()
    daemon = Daemon(workdir, database_url=url, identifier=IDENTIFIER, backend_url=stubs.url)
    try:
        daemon.spawn()
        deadline = daemon.spawned_at + CAP_S
        while (at := stubs.first_heartbeat_at) is None:
            if not daemon.running():
                raise RuntimeError(f"calsched run exited before its first beat:\n{daemon.tail()}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no heartbeat within {CAP_S:g} s")
            time.sleep(0.002)
        return at - daemon.spawned_at
    finally:
        daemon.stop()
        stubs.stop()


def run(cfg: BenchConfig) -> list[Row]:
    """Start to first heartbeat at 3 history sizes, in-process and as a process."""
    active = cfg.size(500, 10_000)
    histories = [2_000, 10_000] if cfg.quick else [10_000, 100_000, 1_000_000]
    workdir = cfg.workdir / "restart"
    shutil.rmtree(workdir, ignore_errors=True)
    urls = {h: fabricated(workdir, active, h) for h in histories}
    rows: list[Row] = []
    for case, measure in (
        ("in-process", restart_in_process),
        ("calsched run process", lambda url: restart_process(url, workdir / "daemon")),
    ):
        # One start thrown away first: the first in a process pays one-time costs
        # (lazy imports, compiled-statement caches) that no real restart pays twice.
        measure(urls[histories[0]])
        samples = interleaved(
            cfg.repeats,
            {str(h): (lambda url=url, m=measure: m(url) * 1000) for h, url in urls.items()},
        )
        for h in histories:
            value = median(samples[str(h)])
            process = case != "in-process"
            rows.append(
                Row(
                    bench=BENCH,
                    case=case,
                    size=f"{active:,} active, history {h:,} (+{3 * active:,}) events",
                    unit="ms",
                    value=value,
                    higher_is_better=False,
                    target="< 800 ms" if process else None,
                    met=value < 800 if process else None,
                    samples=samples[str(h)],
                )
            )
        big, small = histories[-1], histories[0]
        value, base = median(samples[str(big)]), median(samples[str(small)])
        rows.append(
            Row(
                bench=BENCH,
                case=f"{case}: history {big:,} vs {small:,}",
                size=f"{active:,} active",
                unit="ms",
                value=value,
                higher_is_better=False,
                compare=f"history {small:,}",
                compare_value=base,
                target="<= 1.10x",
                met=value <= 1.10 * base,
            )
        )
        progress(
            f"restart {case}: "
            + ", ".join(f"{h:,}: {median(samples[str(h)]):.0f} ms" for h in histories)
        )
    shutil.rmtree(workdir, ignore_errors=True)
    return rows
