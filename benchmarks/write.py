"""a. One writer, one transition per commit, SQLite WAL + ``synchronous=FULL``.

Every contender works on in-progress slots, pausing them all, then resuming them all, one
transition per transaction. Through calsched each transition is one :meth:`Journal.apply`:
it reads the slot, appends the event, adds the outbox row and updates the projection.

- **raw sqlite3, same SQL**: the statements calsched sent for one pause and one resume,
  captured on the journal's engine (:mod:`benchmarks.samesql`) and replayed on the
  driver's own connection, made by calsched's engine set-up so the pragmas are the same.
  What is left between the two is calsched's Python.
- **eventsourcing 9.5**: one aggregate per slot, one event per ``save`` (:mod:`benchmarks.es`).

h. With ``CALSCHED_TEST_PG_URL`` set, calsched and the raw same-SQL replay (psycopg) also
run on PostgreSQL, each in a private schema.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BenchConfig,
    Row,
    interleaved,
    median,
    pg_schema,
    progress,
    ratio,
    timed,
)
from benchmarks.fabricate import fabricate
from benchmarks.samesql import Captured, Replay, capture, raw_connection, sqlite_pragmas
from calsched.journal import Journal, TransitionRequest
from calsched.model import Actor, Trigger

__all__ = ["BENCH", "IDENTIFIER", "SLOTS", "run"]

BENCH = "a. single writer"
IDENTIFIER = "bench"
#: In-progress slots the writers cycle over (pause all, then resume all).
SLOTS = 64
#: History under them, so the tables are not empty and a seq is not mistaken for a count.
HISTORY = 400


class _Flipper:
    """Which slot and which trigger is next: pause every slot, then resume every slot."""

    def __init__(self, slots: list[tuple[str, str]]) -> None:
        self.slots = slots
        self.step = 0

    def next(self) -> tuple[int, str, str]:
        """(0 for pause or 1 for resume, slot id, agent id), and move on."""
        index, turn = self.step % len(self.slots), (self.step // len(self.slots)) % 2
        self.step += 1
        return (turn, *self.slots[index])


def _journal_side(url: str) -> tuple[Journal, list[tuple[str, str]], list[Captured]]:
    journal = Journal.open(url, IDENTIFIER, synchronous="FULL", upgrade=True)
    slots = [(v.slot_id, v.agent_id) for v in journal.load_active()]
    first = slots[0][0]
    # Pause then resume the first slot: every slot is in progress again afterwards.
    captured = [
        capture(journal, TransitionRequest(first, Trigger.pause, Actor.agent, attempt=1)),
        capture(journal, TransitionRequest(first, Trigger.resume, Actor.agent, attempt=1)),
    ]
    return journal, slots, captured


_TRIGGERS = (Trigger.pause, Trigger.resume)


def journal_contender(
    journal: Journal, slots: list[tuple[str, str]], n: int
) -> Callable[[], float]:
    """A contender: ``n`` transitions through ``journal``, in transitions/s."""
    flip = _Flipper(slots)

    def go() -> None:
        for _ in range(n):
            turn, slot_id, _agent = flip.next()
            journal.apply(TransitionRequest(slot_id, _TRIGGERS[turn], Actor.agent, attempt=1))

    return lambda: n / timed(go)


def replay_contender(replay: Replay, slots: list[tuple[str, str]], n: int) -> Callable[[], float]:
    """A contender: ``n`` replayed transitions, in transitions/s."""
    flip = _Flipper(slots)

    def go() -> None:
        for _ in range(n):
            replay.run(*flip.next())

    return lambda: n / timed(go)


def _row(case: str, n: int, ours: list[float], compare: str, theirs: list[float], **kw: Any) -> Row:
    value, other = median(ours), median(theirs)
    return Row(
        bench=BENCH,
        case=case,
        size=f"{n:,} transitions x {len(ours)}",
        unit="transitions/s",
        value=value,
        compare=compare,
        compare_value=other,
        samples=ours,
        **kw,
    )


def _met(ours: list[float], theirs: list[float], at_least: float) -> bool:
    found = ratio(median(ours), median(theirs))
    return found is not None and found >= at_least


def _sqlite(cfg: BenchConfig, n: int) -> list[Row]:
    from benchmarks.es import SlotAggregate, open_app

    work = cfg.workdir / "a-sqlite"
    work.mkdir(parents=True, exist_ok=True)
    cal_url, raw_url = f"sqlite:///{work / 'calsched.db'}", f"sqlite:///{work / 'raw.db'}"
    for url in (cal_url, raw_url):
        fabricate(url, IDENTIFIER, active=SLOTS, history_events=HISTORY)
    with ExitStack() as stack:
        journal, slots, captured = _journal_side(cal_url)
        stack.callback(journal.close)
        replay = Replay(raw_connection(raw_url), captured)
        stack.callback(replay.close)
        app = open_app(Path(work / "es.db"))
        stack.callback(app.close)
        aggregates = [SlotAggregate(s, a) for s, a in slots]
        for aggregate in aggregates:  # in progress, like the journal's slots
            aggregate.dispatch()
            aggregate.woke()
        app.save(*aggregates)

        with journal.engine.connect() as conn:
            ours = sqlite_pragmas(conn.connection.driver_connection)
        theirs = sqlite_pragmas(replay.connection)
        if ours != theirs:
            raise RuntimeError(f"raw sqlite3 runs with {theirs}, the journal with {ours}")
        flip = _Flipper([(str(i), "") for i in range(len(aggregates))])

        def es_go() -> None:
            for _ in range(n):
                turn, index, _agent = flip.next()
                aggregate = aggregates[int(index)]
                aggregate.resume() if turn else aggregate.pause()
                app.save(aggregate)

        progress(f"a: {n:,} transitions per contender, {cfg.repeats} rounds (SQLite)")
        samples = interleaved(
            cfg.repeats,
            {
                "calsched": journal_contender(journal, slots, n),
                "raw": replay_contender(replay, slots, n),
                "eventsourcing": lambda: n / timed(es_go),
            },
        )
        assert journal.verify() == [], "the benchmark left the journal inconsistent"
    statements = len(captured[0].statements)
    note = (
        f"WAL, synchronous=FULL on all three; {statements} statements per transition "
        f"(BEGIN included), replayed from the journal's own"
    )
    cal = samples["calsched"]
    return [
        _row("calsched journal (SQLite)", n, cal, "raw sqlite3 same SQL", samples["raw"],
             target=">= 0.5x raw same-SQL", met=_met(cal, samples["raw"], 0.5), note=note),
        _row("calsched journal (SQLite)", n, cal, "eventsourcing 9.5", samples["eventsourcing"],
             target=">= 1.0x eventsourcing", met=_met(cal, samples["eventsourcing"], 1.0),
             note="one event per aggregate save"),
    ]  # fmt: skip


def _postgres(cfg: BenchConfig, n: int, admin_url: str) -> list[Row]:
    with ExitStack() as stack:
        cal_url = stack.enter_context(pg_schema(admin_url, "bench_a"))
        raw_url = stack.enter_context(pg_schema(admin_url, "bench_a"))
        for url in (cal_url, raw_url):
            fabricate(url, IDENTIFIER, active=SLOTS, history_events=HISTORY)
        journal, slots, captured = _journal_side(cal_url)
        stack.callback(journal.close)
        replay = Replay(raw_connection(raw_url), captured)
        stack.callback(replay.close)
        progress(f"a: {n:,} transitions per contender, {cfg.repeats} rounds (PostgreSQL)")
        samples = interleaved(
            cfg.repeats,
            {
                "calsched": journal_contender(journal, slots, n),
                "raw": replay_contender(replay, slots, n),
            },
        )
    return [
        _row("calsched journal (PostgreSQL)", n, samples["calsched"], "raw psycopg same SQL",
             samples["raw"], note="synchronous_commit as the server has it, for both"),
    ]  # fmt: skip


def run(cfg: BenchConfig) -> list[Row]:
    """The a rows (and h's PostgreSQL row when a server is configured)."""
    n = cfg.size(300, 5000)
    rows = _sqlite(cfg, n)
    if cfg.pg_url:
        rows += _postgres(cfg, n, cfg.pg_url)
    else:
        progress("a on PostgreSQL skipped: CALSCHED_TEST_PG_URL is not set")
    return rows
