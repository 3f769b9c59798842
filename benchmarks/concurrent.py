"""b. Concurrent callers through the scheduler's tool entry points, with wake completions.

Each round builds its own scheduler state with the real API: an
:class:`~calsched.testing.InMemoryBackend` lists ``slots_per_agent`` slots for every agent,
one :meth:`Scheduler.heartbeat_once` journals them, and :meth:`Scheduler.idle` waits until
each agent's first slot is woken on :class:`~calsched.testing.InMemoryHost` (queue policy:
the others wait their turn). Then one asyncio task per agent calls the tools: ``pause`` and
``resume`` ``cycles`` times, then ``complete``; the complete lets the scheduler dispatch and
wake the agent's next slot, and the caller goes on once that slot is in progress. The
figure is every transition committed meanwhile (tool calls, dispatches, wakes: counted in
the journal) per second; latency is each tool call's, p50 and p99.

- **eventsourcing 9.5 with as many threads**: one aggregate per slot, the same moves (the
  dispatch and the wake included), one event per save, the same durability (WAL, FULL).
- h. with ``CALSCHED_TEST_PG_URL``: the scheduler on PostgreSQL against raw psycopg, as
  many threads each replaying the journal's own pause/resume statements
  (:mod:`benchmarks.samesql`) on its own connection.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from benchmarks.common import (
    BenchConfig,
    Row,
    interleaved,
    median,
    percentile,
    pg_schema,
    progress,
    ratio,
)
from benchmarks.fabricate import fabricate
from benchmarks.samesql import Replay, capture, raw_connection
from calsched.journal import Journal, TransitionRequest
from calsched.journal.schema import events
from calsched.model import Actor, Slot, SlotState, Trigger
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost

__all__ = ["BENCH", "CALLERS", "Shape", "run"]

BENCH = "b. concurrent callers"
IDENTIFIER = "bench"
CALLERS = 64


@dataclass(frozen=True)
class Shape:
    """How much each caller does in one round."""

    callers: int
    slots_per_agent: int
    cycles: int  # pause + resume pairs per slot, before its complete

    @property
    def transitions(self) -> int:
        """Transitions per round: tool calls, plus dispatch and wake of every later slot."""
        per_slot = 2 * self.cycles + 1
        return self.callers * (self.slots_per_agent * per_slot + (self.slots_per_agent - 1) * 2)

    def size(self) -> str:
        """The row's size column."""
        who = "1 caller" if self.callers == 1 else f"{self.callers} callers"
        return (
            f"{who} x {self.slots_per_agent} slots x "
            f"{self.cycles} pause/resume + complete ({self.transitions:,} transitions)"
        )


@dataclass
class _Samples:
    rates: list[float] = field(default_factory=list)
    latencies_ms: list[list[float]] = field(default_factory=list)

    def p(self, pct: float) -> float:
        """The median over rounds of each round's ``pct`` percentile."""
        return median([percentile(lat, pct) for lat in self.latencies_ms])


def _event_count(journal: Journal) -> int:
    with journal.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


async def _until_in_progress(scheduler: Scheduler, agent_id: str) -> None:
    # The next slot is dispatching until the scheduler's wake task commits ``woke``.
    while (await scheduler.current_slot(agent_id)).state is not SlotState.in_progress:
        await asyncio.sleep(0.001)


async def _scheduler_round(url: str, shape: Shape) -> tuple[float, list[float]]:
    agents = [f"agent-{i}" for i in range(shape.callers)]
    to_fire = [
        Slot(id=f"{agent}-s{q}", agent_id=agent, title=f"slot {q} of {agent}")
        for q in range(shape.slots_per_agent)
        for agent in agents
    ]
    journal = Journal.open(url, IDENTIFIER, synchronous="FULL", upgrade=True)
    backend, host = InMemoryBackend(to_fire), InMemoryHost(agents)
    scheduler = Scheduler(SchedulerSettings(identifier=IDENTIFIER), journal, backend, host)
    latencies: list[float] = []
    try:
        await scheduler.heartbeat_once()
        backend.to_fire = []
        await scheduler.idle()
        before = _event_count(journal)

        async def call(fn: Callable[[], object]) -> None:
            began = time.perf_counter()
            await fn()  # type: ignore[misc]
            latencies.append((time.perf_counter() - began) * 1000)

        async def caller(agent: str) -> None:
            for _ in range(shape.slots_per_agent):
                await _until_in_progress(scheduler, agent)
                for _ in range(shape.cycles):
                    await call(lambda: scheduler.pause(agent, "benchmark"))
                    await call(lambda: scheduler.resume(agent))
                await call(lambda: scheduler.complete(agent, "benchmark: done"))

        began = time.perf_counter()
        await asyncio.gather(*(caller(a) for a in agents))
        took = time.perf_counter() - began
        await scheduler.idle()
        done = _event_count(journal) - before
        assert done == shape.transitions, f"{done} transitions, {shape.transitions} planned"
        assert scheduler.active() == [], "every slot should be completed"
    finally:
        await scheduler.stop()
        journal.close()
    return done / took, latencies


def _es_round(path: Path, shape: Shape) -> tuple[float, list[float]]:
    from benchmarks.es import SlotAggregate, open_app

    app = open_app(path)
    try:
        queues = [
            [SlotAggregate(f"a{i}-s{q}", f"a{i}") for q in range(shape.slots_per_agent)]
            for i in range(shape.callers)
        ]
        app.save(*(agg for queue in queues for agg in queue))
        for queue in queues:  # as the scheduler's set-up: each first slot woken
            queue[0].dispatch()
            queue[0].woke()
            app.save(queue[0])
        latencies: list[float] = []
        lock = threading.Lock()
        start = threading.Barrier(shape.callers + 1)

        def save(agg: SlotAggregate, mine: list[float]) -> None:
            began = time.perf_counter()
            app.save(agg)
            mine.append((time.perf_counter() - began) * 1000)

        def worker(queue: list[SlotAggregate]) -> None:
            mine: list[float] = []
            start.wait()
            for q, agg in enumerate(queue):
                if q:
                    agg.dispatch()
                    save(agg, mine)
                    agg.woke()
                    save(agg, mine)
                for _ in range(shape.cycles):
                    agg.pause()
                    save(agg, mine)
                    agg.resume()
                    save(agg, mine)
                agg.complete("benchmark: done")
                save(agg, mine)
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=worker, args=(queue,)) for queue in queues]
        for thread in threads:
            thread.start()
        start.wait()
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        took = time.perf_counter() - began
    finally:
        app.close()
    assert len(latencies) == shape.transitions
    return shape.transitions / took, latencies


def _replay_round(url: str, shape: Shape) -> tuple[float, list[float]]:
    """``shape.transitions`` pause/resume replays over ``shape.callers`` threads."""
    journal = Journal.open(url, IDENTIFIER, upgrade=True)
    try:
        slots = [(v.slot_id, v.agent_id) for v in journal.load_active()][: shape.callers]
        first = slots[0][0]
        captured = [
            capture(journal, TransitionRequest(first, trig, Actor.agent, attempt=1))
            for trig in (Trigger.pause, Trigger.resume)
        ]
    finally:
        journal.close()
    each = shape.transitions // shape.callers
    replays = [Replay(raw_connection(url), captured) for _ in slots]
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(len(slots) + 1)

    def worker(replay: Replay, slot_id: str, agent_id: str) -> None:
        mine: list[float] = []
        start.wait()
        for i in range(each):
            began = time.perf_counter()
            replay.run(i % 2, slot_id, agent_id)
            mine.append((time.perf_counter() - began) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [
        threading.Thread(target=worker, args=(r, s, a))
        for r, (s, a) in zip(replays, slots, strict=True)
    ]
    try:
        for thread in threads:
            thread.start()
        start.wait()
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        took = time.perf_counter() - began
    finally:
        for replay in replays:
            replay.close()
    return len(latencies) / took, latencies


def _contender(
    samples: _Samples, go: Callable[[int], tuple[float, list[float]]]
) -> Callable[[], float]:
    rounds = itertools.count()

    def one() -> float:
        rate, latencies = go(next(rounds))
        samples.rates.append(rate)
        samples.latencies_ms.append(latencies)
        return rate

    return one


def _rate_row(
    case: str, shape: Shape, ours: _Samples, compare: str, theirs: _Samples, **kw: object
) -> Row:
    return Row(
        bench=BENCH,
        case=case,
        size=shape.size(),
        unit="transitions/s",
        value=median(ours.rates),
        compare=compare,
        compare_value=median(theirs.rates),
        p50_ms=ours.p(50),
        p99_ms=ours.p(99),
        samples=ours.rates,
        **kw,  # type: ignore[arg-type]
    )


def _sqlite(cfg: BenchConfig, many: Shape, one: Shape) -> list[Row]:
    work = cfg.workdir / "b-sqlite"
    work.mkdir(parents=True, exist_ok=True)
    found = {name: _Samples() for name in ("cal64", "es64", "cal1", "es1")}

    def scheduler(shape: Shape, tag: str) -> Callable[[int], tuple[float, list[float]]]:
        return lambda r: asyncio.run(_scheduler_round(f"sqlite:///{work / f'{tag}-{r}.db'}", shape))

    def es(shape: Shape, tag: str) -> Callable[[int], tuple[float, list[float]]]:
        return lambda r: _es_round(work / f"{tag}-{r}.db", shape)

    progress(f"b: {many.size()} and 1 caller, {cfg.repeats} rounds (SQLite)")
    interleaved(
        cfg.repeats,
        {
            "cal64": _contender(found["cal64"], scheduler(many, "cal64")),
            "es64": _contender(found["es64"], es(many, "es64")),
            "cal1": _contender(found["cal1"], scheduler(one, "cal1")),
            "es1": _contender(found["es1"], es(one, "es1")),
        },
    )
    cal, theirs = found["cal64"], found["es64"]
    factor = ratio(median(cal.rates), median(theirs.rates))
    p99 = cal.p(99)
    es_lat = f"eventsourcing p50/p99 {theirs.p(50):.1f}/{theirs.p(99):.1f} ms per save"
    return [
        _rate_row(f"scheduler, {many.callers} callers (SQLite)", many, cal,
                  f"eventsourcing, {many.callers} threads", theirs,
                  target=">= 3x eventsourcing", met=factor is not None and factor >= 3,
                  note=es_lat),
        Row(bench=BENCH, case=f"scheduler, {many.callers} callers: tool call p99 (SQLite)",
            size=many.size(), unit="ms", value=p99, higher_is_better=False,
            p50_ms=cal.p(50), p99_ms=p99, target="< 50 ms", met=p99 < 50,
            samples=[percentile(lat, 99) for lat in cal.latencies_ms]),
        _rate_row("scheduler, 1 caller (SQLite)", one, found["cal1"],
                  "eventsourcing, 1 thread", found["es1"]),
    ]  # fmt: skip


def _postgres(cfg: BenchConfig, many: Shape) -> list[Row]:
    found = {name: _Samples() for name in ("cal", "raw")}
    with ExitStack() as stack:
        raw_url = stack.enter_context(pg_schema(cfg.pg_url or "", "bench_b"))
        fabricate(raw_url, IDENTIFIER, active=many.callers, history_events=400)

        def scheduler(r: int) -> tuple[float, list[float]]:
            with pg_schema(cfg.pg_url or "", "bench_b") as url:
                return asyncio.run(_scheduler_round(url, many))

        progress(f"b: {many.size()}, {cfg.repeats} rounds (PostgreSQL)")
        interleaved(
            cfg.repeats,
            {
                "cal": _contender(found["cal"], scheduler),
                "raw": _contender(found["raw"], lambda r: _replay_round(raw_url, many)),
            },
        )
    return [
        _rate_row(f"scheduler, {many.callers} callers (PostgreSQL)", many, found["cal"],
                  f"raw psycopg same SQL, {many.callers} threads", found["raw"],
                  note="raw: the journal's pause/resume statements, one connection per thread"),
    ]  # fmt: skip


def run(cfg: BenchConfig) -> list[Row]:
    """b's rows on SQLite (and h's PostgreSQL row when a server is configured)."""
    # Quick: each caller completes one slot and, after its wake, the next (no pauses).
    many = Shape(CALLERS, slots_per_agent=cfg.size(2, 8), cycles=cfg.size(0, 2))
    # One caller does the work of a few of the 64.
    one = Shape(1, slots_per_agent=cfg.size(8, 64), cycles=cfg.size(0, 2))
    rows = _sqlite(cfg, many, one)
    if cfg.pg_url:
        rows += _postgres(cfg, many)
    else:
        progress("b on PostgreSQL skipped: CALSCHED_TEST_PG_URL is not set")
    return rows
