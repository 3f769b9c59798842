"""Backend faults against the real reference backend on loopback (issue 10, point 4).

Each case runs a started :class:`~calsched.scheduler.Scheduler` (its own heartbeat and
outbox loops, small timings) over :class:`~calsched.backend.http.HttpBackend` against the
reference backend served by uvicorn on 127.0.0.1. Three slots fire and are delivered;
then a fault is planned for every post on one route for ``FAULT_S`` seconds while more
changes are journaled, then healed. Checked for every case:

- lost updates 0: every outbox row the journal holds has a receipt at the backend under
  its idempotency key, and each slot's receipts are exactly the changes journaled;
- delivered once: receipts are unique per idempotency key, and no attempt of a slot has
  two terminal statuses; every slot is woken once;
- posts during the fault (counted at the backend: one planned fault is taken per post)
  are at most what the backoff schedule allows (:func:`outbox_bound`,
  :func:`heartbeat_bound`, computed from the settings with every jittered wait at its
  lower end);
- the time to drain after the heal is measured and printed, one line per fault
  (``pytest -s``); docs/reliability.md "Backend faults" quotes a run.

One long fault (8 s, the cap raised to 2 s) gives posts per minute. A 429 with a
``Retry-After`` of 0 (or negative, or a past date) once outpaced the schedule (the hint
replaced the backoff); now the hint is only a floor, and a test holds it to the schedule.

The scheduler's journal is a SQLite file: the subject here is the HTTP edge and the
retry schedule. A few faults run again on a PostgreSQL journal (marked ``postgres``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from calsched.backend.calendar import LocalCalendar
from calsched.backend.http import HttpBackend
from calsched.backend.server import create_backend_app
from calsched.journal import Journal
from calsched.model import HeartbeatRequest, HeartbeatResponse, RejectedSlot, SlotUpdate
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import FaultPlan, InMemoryHost, serve_backend

#: Enough uses that a planned fault lasts until it is cleared (the heal).
FOREVER = 1_000_000
SLOTS = 3
FAULT_S = 0.8
SETTINGS = SchedulerSettings(
    identifier="host-a",
    heartbeat_interval_s=0.2,
    outbox_backoff_initial_s=0.05,
    outbox_backoff_max_s=0.4,
    outbox_poll_s=0.05,
    backend_deadline_s=0.3,
    shutdown_grace_s=1.0,
)
TERMINAL = frozenset({"completed", "aborted"})

Route = Literal["status", "heartbeat"]


@dataclass(frozen=True)
class Case:
    """One fault: how to plan it on ``route``, and the Retry-After the outbox honours."""

    name: str
    route: Route
    plan: Callable[[FaultPlan, Route], object]
    #: The wait the backend asks for, as the outbox reads it (``None``: none or unusable).
    hint: float | None = None
    #: The backend is not listening at all (connection refused) instead of a planned fault.
    down: bool = False


@dataclass
class Figures:
    """What one case measured."""

    posts: int
    bound: float
    drain_s: float
    lost: int
    dup: int
    fault_s: float

    def line(self, name: str) -> str:
        """The summary line printed per fault."""
        return (
            f"fault={name}, posts={self.posts}, bound={self.bound:g}, "
            f"fault_s={self.fault_s:.2f}, drain_s={self.drain_s:.2f}, "
            f"lost={self.lost}, dup={self.dup}"
        )


def outbox_bound(settings: SchedulerSettings, seconds: float, hint: float | None) -> float:
    """Most posts one slot's head row can make in ``seconds`` of a fault.

    The first post may come at once; after try ``k`` the outbox waits at least half of
    ``min(cap, initial * 2**k)`` (equal jitter), or exactly ``min(hint, cap)`` when the
    backend sent a usable Retry-After. A wait of 0 allows any number of posts.
    """
    initial, cap = settings.outbox_backoff_initial_s, settings.outbox_backoff_max_s
    posts, at = 0, 0.0
    while at <= seconds:
        wait = min(hint, cap) if hint is not None else min(cap, initial * 2.0**posts) / 2
        posts += 1
        if wait <= 0:
            return math.inf
        at += wait
    return float(posts)


def heartbeat_bound(settings: SchedulerSettings, seconds: float) -> float:
    """Most beats in ``seconds`` of a fault: after failure ``k`` the heartbeat waits at
    least ``max(interval, min(cap, interval * 2**(k-1)) / 2)``, cap the larger of the
    interval and ``outbox_backoff_max_s``; the first failing beat may come at once."""
    interval = settings.heartbeat_interval_s
    cap = max(interval, settings.outbox_backoff_max_s)
    beats, at = 0, 0.0
    while at <= seconds:
        beats += 1
        at += max(interval, min(cap, interval * 2.0 ** (beats - 1)) / 2)
    return float(beats)


def test_outbox_bound_follows_the_schedule() -> None:
    """The bound's arithmetic: 0.05/2, 0.1/2, 0.2/2, then 0.4/2 per post, from t=0."""
    # Posts at 0, 0.025, 0.075, 0.175, 0.375, 0.575, 0.775, 0.975: 8 within one second.
    assert outbox_bound(SETTINGS, 1.0, None) == 8
    assert outbox_bound(SETTINGS, 1.0, 0.25) == 5  # 0, .25, .5, .75, 1.0
    assert outbox_bound(SETTINGS, 1.0, 1e9) == 3  # capped at 0.4: 0, .4, .8
    assert outbox_bound(SETTINGS, 1.0, 0.0) == math.inf
    assert heartbeat_bound(SETTINGS, 1.0) == 6  # 0, .2, .4, .6, .8, 1.0: never under 0.2


class CountingBackend:
    """:class:`HttpBackend` with a count of the calls the scheduler made (client side):
    the only count there is when nothing listens at the backend's port."""

    def __init__(self, inner: HttpBackend) -> None:
        self.inner = inner
        self.calls: dict[Route, int] = {"status": 0, "heartbeat": 0}

    async def heartbeat(
        self, request: HeartbeatRequest
    ) -> tuple[HeartbeatResponse, list[RejectedSlot]]:
        """Count, then beat."""
        self.calls["heartbeat"] += 1
        return await self.inner.heartbeat(request)

    async def send_status(self, slot_id: str, update: SlotUpdate, idempotency_key: str) -> None:
        """Count, then post."""
        self.calls["status"] += 1
        await self.inner.send_status(slot_id, update, idempotency_key)

    async def aclose(self) -> None:
        """Close the client."""
        await self.inner.aclose()


async def until(check: Callable[[], bool], *, within: float = 20.0) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds (a hang, not a clock)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not check():
        if loop.time() > end:
            raise AssertionError(f"not reached within {within}s: {check.__doc__ or check}")
        await asyncio.sleep(0.01)


class Backend:
    """The reference backend on a fixed loopback port that can be stopped and restarted."""

    def __init__(self, calendar: LocalCalendar, faults: FaultPlan, api_key: str) -> None:
        self.app = create_backend_app(calendar, api_key, faults=faults)
        self.port = 0
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Serve (on the same port as before, if there was one); the base URL."""
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        stop = self._stop = asyncio.Event()

        async def serve() -> None:
            async with serve_backend(self.app, port=self.port) as url:
                ready.set_result(url)
                await stop.wait()

        self._task = asyncio.create_task(serve())
        either: set[asyncio.Future[Any]] = {ready, self._task}
        done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            self._task.result()
        url = ready.result()
        self.port = int(url.rsplit(":", 1)[1])
        return url

    async def stop(self) -> None:
        """Stop serving: the port refuses connections until :meth:`start`."""
        if self._stop is not None and self._task is not None:
            self._stop.set()
            await self._task
            self._stop = self._task = None


@asynccontextmanager
async def running(
    db: str, url: str, api_key: str, host: InMemoryHost, settings: SchedulerSettings
) -> AsyncIterator[tuple[Scheduler, CountingBackend]]:
    """A started scheduler on a fresh journal at ``db``, talking to ``url``."""
    Journal.open(db, settings.identifier, upgrade=True).close()
    backend = CountingBackend(HttpBackend(url, api_key))
    sched = Scheduler(settings, Journal.open(db, settings.identifier), backend, host)
    await sched.start()
    try:
        yield sched, backend
    finally:
        await sched.stop()
        sched.journal.close()
        await backend.aclose()


async def run_case(
    case: Case,
    calendar: LocalCalendar,
    faults: FaultPlan,
    tmp_path: Path,
    api_key: str,
    *,
    settings: SchedulerSettings = SETTINGS,
    fault_s: float = FAULT_S,
    db: str | None = None,
) -> Figures:
    """Fire three slots, fault one route for ``fault_s`` while more changes happen, heal;
    check the receipts and return the figures. The journal is a SQLite file unless
    ``db`` names another database."""
    db = db or f"sqlite:///{tmp_path / 'host.db'}"
    first = [f"s-{i}" for i in range(SLOTS)]
    later = [f"s-{i}" for i in range(SLOTS, 2 * SLOTS)]
    for slot in first:
        calendar.add(slot, f"agent-{slot}")
    host = InMemoryHost([f"agent-{s}" for s in first + later])
    server = Backend(calendar, faults, api_key)
    url = await server.start()
    loop = asyncio.get_running_loop()
    try:
        async with running(db, url, api_key, host, settings) as (sched, counted):

            def fired_and_told() -> bool:
                """every first slot in_progress at the backend"""
                return all(calendar.receipts(s) for s in first)

            await until(fired_and_told)
            before = dict(counted.calls)
            armed = loop.time()
            if case.down:
                await server.stop()
            else:
                case.plan(faults, case.route)
            if case.route == "status":
                for slot in first:
                    await sched.pause(f"agent-{slot}", "waiting on data")
                    await sched.resume(f"agent-{slot}")
                    await sched.complete(f"agent-{slot}", "done")
            else:
                # The first slots finish (their posts are not faulted); new ones fall due
                # while no beat gets through, and must fire once after the heal.
                for slot in first:
                    await sched.complete(f"agent-{slot}", "done")
                for slot in later:
                    calendar.add(slot, f"agent-{slot}")
            await asyncio.sleep(fault_s)
            if case.down:
                posts = counted.calls[case.route] - before[case.route]
                await server.start()
            else:
                posts = len(faults.applied)
                faults.clear()
            healed = loop.time()

            def drained() -> bool:
                """the outbox empty and every slot told to the backend"""
                if sched.journal.outbox_counts().pending:
                    return False
                return all(calendar.receipts(s) for s in first + later[: _later(case)])

            await until(drained)
            drain_s = loop.time() - healed
            lost, dup = audit(sched, calendar, case)
            assert sorted(w.slot_id for w in host.accepted) == sorted(
                first + later[: _later(case)]
            ), "every slot woken exactly once"
    finally:
        await server.stop()
    if case.route == "status":
        bound = SLOTS * outbox_bound(settings, healed - armed, case.hint)
    else:
        bound = heartbeat_bound(settings, healed - armed)
    return Figures(posts, bound, drain_s, lost, dup, healed - armed)


def _later(case: Case) -> int:
    return SLOTS if case.route == "heartbeat" else 0


def audit(sched: Scheduler, calendar: LocalCalendar, case: Case) -> tuple[int, int]:
    """(lost updates, duplicate deliveries): journal outbox rows against receipts."""
    receipts = calendar.receipts(None)
    keys = [r.idempotency_key for r in receipts]
    dup = len(keys) - len(set(keys))
    terminal: dict[tuple[str, int], int] = {}
    for r in receipts:
        if r.status.value in TERMINAL:
            terminal[(r.slot_id, r.attempt)] = terminal.get((r.slot_id, r.attempt), 0) + 1
    dup += sum(n - 1 for n in terminal.values())
    rows = sched.journal.outbox_rows()
    lost = sum(
        1 for row in rows if row.idempotency_key not in set(keys) or row.delivered_at is None
    )
    # Nothing at the backend that the journal did not say, and each slot's story in order.
    assert set(keys) == {row.idempotency_key for row in rows}
    expected = (
        ["in_progress", "paused", "in_progress", "completed"]
        if case.route == "status"
        else ["in_progress", "completed"]
    )
    for slot in {row.slot_id for row in rows}:
        statuses = [r.status.value for r in calendar.receipts(slot)]
        story = expected if int(slot.split("-")[1]) < SLOTS else ["in_progress"]
        assert statuses == story, slot
    return lost, dup


CASES = [
    Case("refused_401", "status", lambda p, r: p.refused(route=r, times=FOREVER)),
    Case("server_error_503", "status", lambda p, r: p.server_error(503, route=r, times=FOREVER)),
    Case(
        "too_many_retry_after_0.25",
        "status",
        lambda p, r: p.too_many(0.25, route=r, times=FOREVER),
        hint=0.25,
    ),
    Case(
        "too_many_retry_after_1e9",
        "status",
        lambda p, r: p.too_many(1e9, route=r, times=FOREVER),
        hint=1e9,
    ),
    Case(
        "too_many_retry_after_garbage",
        "status",
        lambda p, r: p.too_many("soon, maybe", route=r, times=FOREVER),
    ),
    Case("hang", "status", lambda p, r: p.hang(30, route=r, times=FOREVER)),
    Case("slow_drip", "status", lambda p, r: p.slow_drip(10, chunks=100, route=r, times=FOREVER)),
    Case("truncated_body", "status", lambda p, r: p.truncated_body(route=r, times=FOREVER)),
    Case("connection_reset", "status", lambda p, r: p.connection_reset(route=r, times=FOREVER)),
    Case(
        "malformed_json_503",
        "status",
        lambda p, r: p.malformed_json(status=503, route=r, times=FOREVER),
    ),
    Case(
        "too_deep_json_503",
        "status",
        lambda p, r: p.too_deep_json(status=503, route=r, times=FOREVER),
    ),
    Case(
        "execute_then_timeout",
        "status",
        lambda p, r: p.execute_then_timeout(hang_seconds=30, route=r, times=FOREVER),
    ),
    Case("connection_refused", "status", lambda p, r: None, down=True),
    Case("refused_401", "heartbeat", lambda p, r: p.refused(route=r, times=FOREVER)),
    Case("server_error_503", "heartbeat", lambda p, r: p.server_error(503, route=r, times=FOREVER)),
    Case("hang", "heartbeat", lambda p, r: p.hang(30, route=r, times=FOREVER)),
    Case(
        "slow_drip", "heartbeat", lambda p, r: p.slow_drip(10, chunks=100, route=r, times=FOREVER)
    ),
    Case("truncated_body", "heartbeat", lambda p, r: p.truncated_body(route=r, times=FOREVER)),
    Case("connection_reset", "heartbeat", lambda p, r: p.connection_reset(route=r, times=FOREVER)),
    Case("malformed_json", "heartbeat", lambda p, r: p.malformed_json(route=r, times=FOREVER)),
    Case("too_deep_json", "heartbeat", lambda p, r: p.too_deep_json(route=r, times=FOREVER)),
    Case(
        "execute_then_timeout",
        "heartbeat",
        lambda p, r: p.execute_then_timeout(hang_seconds=30, route=r, times=FOREVER),
    ),
    Case("connection_refused", "heartbeat", lambda p, r: None, down=True),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.route}-{c.name}" for c in CASES])
async def test_a_fault_loses_nothing_delivers_once_and_keeps_to_the_backoff(
    case: Case, calendar: LocalCalendar, faults: FaultPlan, tmp_path: Path, api_key: str
) -> None:
    """Lost 0, duplicates 0, posts within the schedule's bound; figures printed."""
    figures = await run_case(case, calendar, faults, tmp_path, api_key)
    print(f"\n{case.route}: {figures.line(case.name)}")
    assert (figures.lost, figures.dup) == (0, 0)
    assert 1 <= figures.posts <= figures.bound


ZERO_WAITS = [
    Case("too_many_retry_after_0", "status", lambda p, r: p.too_many(0, route=r, times=FOREVER)),
    Case(
        "too_many_retry_after_negative",
        "status",
        lambda p, r: p.too_many("-5", route=r, times=FOREVER),
    ),
    Case(
        "too_many_retry_after_past_date",
        "status",
        lambda p, r: p.too_many("Wed, 21 Oct 2015 07:28:00 GMT", route=r, times=FOREVER),
    ),
]


@pytest.mark.parametrize("case", ZERO_WAITS, ids=[c.name for c in ZERO_WAITS])
async def test_a_retry_after_of_zero_does_not_outpace_the_backoff(
    case: Case, calendar: LocalCalendar, faults: FaultPlan, tmp_path: Path, api_key: str
) -> None:
    """A backend that keeps answering 429 with a wait of 0 (or less, or a date passed)
    is asked no more often than the backoff schedule without a hint allows."""
    figures = await run_case(case, calendar, faults, tmp_path, api_key)
    bound = SLOTS * outbox_bound(SETTINGS, figures.fault_s, None)
    print(f"\nstatus: {figures.line(case.name)} (schedule bound {bound:g})")
    assert (figures.lost, figures.dup) == (0, 0)
    assert 1 <= figures.posts <= bound


LONG_S = 8.0
LONG = SETTINGS.model_copy(update={"outbox_backoff_max_s": 2.0})


@pytest.mark.parametrize("route", ["status", "heartbeat"])
async def test_a_long_fault_keeps_posts_per_minute_within_the_schedule(
    route: Route, calendar: LocalCalendar, faults: FaultPlan, tmp_path: Path, api_key: str
) -> None:
    """503 for 8 s with the cap at 2 s: the posts per minute (per slot for the outbox)
    stay within the schedule's bound; at the cap that is at most 60 / (cap / 2)."""
    case = Case(
        "long_server_error_503", route, lambda p, r: p.server_error(503, route=r, times=FOREVER)
    )
    figures = await run_case(
        case, calendar, faults, tmp_path, api_key, settings=LONG, fault_s=LONG_S
    )
    per = SLOTS if route == "status" else 1
    rate = figures.posts / per / figures.fault_s * 60
    print(
        f"\n{route}: {figures.line(case.name)}, cap_s={LONG.outbox_backoff_max_s:g}, "
        f"posts_per_min{'_per_slot' if per > 1 else ''}={rate:.1f}, "
        f"bound_per_min={figures.bound / per / figures.fault_s * 60:.1f}"
    )
    assert (figures.lost, figures.dup) == (0, 0)
    assert 1 <= figures.posts <= figures.bound


ON_POSTGRES = [c for c in CASES if c.name in ("server_error_503", "execute_then_timeout")] + [
    c for c in CASES if c.name == "connection_refused" and c.route == "status"
]


@pytest.mark.postgres
@pytest.mark.parametrize("case", ON_POSTGRES, ids=[f"{c.route}-{c.name}" for c in ON_POSTGRES])
async def test_a_fault_on_a_postgresql_journal(
    case: Case,
    calendar: LocalCalendar,
    faults: FaultPlan,
    tmp_path: Path,
    api_key: str,
    pg_url: str,
) -> None:
    """The same checks with the scheduler's journal on PostgreSQL."""
    figures = await run_case(case, calendar, faults, tmp_path, api_key, db=pg_url)
    print(f"\n{case.route} (postgresql): {figures.line(case.name)}")
    assert (figures.lost, figures.dup) == (0, 0)
    assert 1 <= figures.posts <= figures.bound
