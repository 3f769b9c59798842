"""c. Burst: one heartbeat delivering N slots for N agents, until every wake is done.

calsched runs ``await s.heartbeat_once(); await s.idle()`` on a
:class:`~calsched.scheduler.Scheduler` over a SQLite journal (``synchronous=FULL``), an
:class:`~calsched.testing.InMemoryBackend` and an :class:`~calsched.testing.InMemoryHost`.
``idle`` also waits for the outbox, so the figure includes telling the backend each slot
is ``in_progress`` (the seed never tells it). The comparison is
:class:`~benchmarks.seed_shaped.SeedShapedScheduler` behind the same two fakes.

Each calsched run has a time cap: a run that does not finish in it is reported as such
("did not finish in N s, k of N woken"), not waited for, and not repeated.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import BenchConfig, Row, interleaved, median, progress
from benchmarks.seed_shaped import SeedShapedScheduler
from calsched.journal import Journal
from calsched.model import Slot
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost

__all__ = ["BurstResult", "burst_calsched", "burst_seed", "make_slots", "run"]

BENCH = "c. burst"
IDENTIFIER = "bench-burst"


@dataclass(frozen=True)
class BurstResult:
    """One run: how long it took (or how long until the cap) and how many were woken.

    ``finished`` is false when the cap cut the run off: then every wake may have been
    done while the outbox was still telling the backend, so ``woken`` alone cannot say.
    """

    seconds: float
    woken: int
    total: int
    finished: bool = True


def make_slots(n: int, *, prefix: str = "s") -> list[Slot]:
    """``n`` slots, one per agent, shaped like the protocol's example."""
    return [
        Slot(
            id=f"{prefix}-{i}",
            agent_id=f"agent-{i}",
            title="Daily report",
            prompt_text=f"Write today's report, part {i}",
        )
        for i in range(n)
    ]


def _settings() -> SchedulerSettings:
    # A short shutdown grace: a run cut off by its cap must not wait 10 s more.
    return SchedulerSettings(identifier=IDENTIFIER, shutdown_grace_s=1.0)


async def _calsched_once(slots: list[Slot], url: str, cap_s: float) -> BurstResult:
    journal = await asyncio.to_thread(Journal.open, url, IDENTIFIER, upgrade=True)
    host = InMemoryHost(sorted({s.agent_id for s in slots}))
    scheduler = Scheduler(_settings(), journal, InMemoryBackend(slots), host)
    start = time.perf_counter()
    finished = True
    try:
        async with asyncio.timeout(cap_s):
            await scheduler.heartbeat_once()
            await scheduler.idle()
    except TimeoutError:
        finished = False
    elapsed = time.perf_counter() - start
    woken = len(host.accepted)
    await scheduler.stop()
    journal.close()
    return BurstResult(elapsed, woken, len(slots), finished)


def burst_calsched(slots: list[Slot], workdir: Path, cap_s: float) -> BurstResult:
    """One calsched run over a fresh SQLite FULL journal in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"burst-{time.monotonic_ns()}.db"
    try:
        return asyncio.run(_calsched_once(slots, f"sqlite:///{path}", cap_s))
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


async def _seed_once(slots: list[Slot]) -> BurstResult:
    host = InMemoryHost(sorted({s.agent_id for s in slots}))
    scheduler = SeedShapedScheduler(IDENTIFIER, InMemoryBackend(slots), host)
    start = time.perf_counter()
    await scheduler.heartbeat_once()
    await scheduler.idle()
    return BurstResult(time.perf_counter() - start, len(host.accepted), len(slots))


def burst_seed(slots: list[Slot]) -> BurstResult:
    """One run of the seed-shaped scheduler (memory only; it has no cap to hit)."""
    return asyncio.run(_seed_once(slots))


def unfinished_note(result: BurstResult, cap_s: float) -> str:
    """The honest line for a run cut off by its cap."""
    return (
        f"did not finish in {cap_s:g} s ({result.woken:,} of {result.total:,} woken; "
        "the rest of the time: wakes still running or the outbox still telling the backend)"
    )


def run(cfg: BenchConfig) -> list[Row]:
    """Burst of ``cfg.size(300, 10_000)`` slots: calsched vs the seed-shaped scheduler."""
    n = cfg.size(300, 10_000)
    cap_s = 60.0 if cfg.quick else 300.0
    slots = make_slots(n)
    workdir = cfg.workdir / "burst"
    results: dict[str, list[BurstResult]] = {"calsched": [], "seed": []}

    def ours() -> float:
        if results["calsched"] and not results["calsched"][-1].finished:
            return float("nan")  # once past the cap, not again: the figure is the cap
        result = burst_calsched(slots, workdir, cap_s)
        results["calsched"].append(result)
        progress(f"burst {n:,}: calsched {result.seconds:.2f} s, {result.woken:,} woken")
        return result.seconds * 1000

    def seed() -> float:
        result = burst_seed(slots)
        results["seed"].append(result)
        return result.seconds * 1000

    samples = interleaved(cfg.repeats, {"calsched": ours, "seed": seed})
    shutil.rmtree(workdir, ignore_errors=True)
    mine = [s for s in samples["calsched"] if s == s]  # drop the NaN of skipped rounds
    cut = [r for r in results["calsched"] if not r.finished]
    size = f"{n:,} slots, {n:,} agents"
    row = Row(
        bench=BENCH,
        case="calsched, SQLite FULL",
        size=size,
        unit="ms",
        value=median(mine),
        higher_is_better=False,
        compare="seed-shaped, in memory",
        compare_value=median(samples["seed"]),
        samples=mine,
        note=unfinished_note(cut[0], cap_s) if cut else f"median of {len(mine)}",
    )
    rate = Row(
        bench=BENCH,
        case="calsched, SQLite FULL",
        size=size,
        unit="wakes/s",
        value=median([r.woken / r.seconds for r in results["calsched"]]),
        compare="seed-shaped, in memory",
        compare_value=median([r.woken / r.seconds for r in results["seed"]]),
        note="wakes done per second of the burst",
    )
    return [row, rate]
