"""A journal written by a real scheduler run, for the audit views and docs/audit.md.

The run uses the in-memory backend and host and a fake clock shared by the scheduler and
its journal, so every time (and so every duration) is known. Starting at
2026-11-27T22:00:00Z (``T0``), with the times in seconds after it:

- 0: the backend lists s-01 (alice), s-02 (bob), s-03 (carol, scheduled an hour ago:
  missed, aborted by the scheduler) and s-05 (dave, whose slot the backend holds as
  aborted: the in_progress update gets a 409 and the slot is reconciled).
- 30: s-04 (alice) arrives and waits behind s-01.
- 60: alice pauses s-01 ("waiting for review"); 360: resumes; 960: completes it
  ("report sent"), and s-04 is woken.
- 120: bob completes s-02 ("done"); its update fails twice with a 503 and is delivered on
  the third try (at 124).
- 1000: an operator aborts s-04 ("wrong agent").
- 1100: s-06 (erin) is woken; the backend rejects its in_progress update for good (dead
  letter); 1200: erin completes it.
- 1300: the backend lists s-02 again: attempt 2, woken again; 1500: bob completes it.
- 1600: s-07 (frank) is listed while the host hangs frank's wakes; the process stops
  with the wake cut off (s-07 left dispatching); 1700: a new process recovers and wakes
  it (actor ``recovery``); 1800: frank completes it.
- 1900: s-08 (carol) is woken; 1950: carol pauses it ("blocked on credentials"); that
  update fails once with a 503 and waits for its retry. s-08 is left paused: the one
  live slot at the end, and the one update the backend has not acknowledged.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from calsched.errors import BackendRejectedError, BackendUnavailableError
from calsched.journal import Journal
from calsched.model import Actor, Slot, parse
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost

__all__ = ["T0", "build_audit_journal"]

T0 = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)


class _Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> None:
        self.now = T0 + timedelta(seconds=seconds)


def _slot(slot_id: str, agent: str, **extra: object) -> Slot:
    return parse(Slot, {"id": slot_id, "agent_id": agent, "title": f"work {slot_id}", **extra})


async def _run(url: str) -> None:
    clock = _Clock()
    backend, host = InMemoryBackend(), InMemoryHost()
    settings = SchedulerSettings(
        identifier="host-a",
        misfire_grace_s=60,
        outbox_backoff_initial_s=1,
        outbox_backoff_max_s=1,
        shutdown_grace_s=0,
    )

    def start() -> Scheduler:
        journal = Journal.open(url, "host-a", upgrade=True, clock=clock)
        return Scheduler(settings, journal, backend, host, clock=clock)

    async def beat(*slots: Slot) -> None:
        backend.to_fire = list(slots)
        await sched.heartbeat_once()
        backend.to_fire = []  # listed once: a terminal slot listed again is a new attempt
        await sched.idle()

    sched = start()
    await sched.recover()
    backend.hold("s-05", "aborted", "cancelled in the calendar")
    late = (T0 - timedelta(hours=1)).isoformat()
    await beat(
        _slot("s-01", "alice"),
        _slot("s-02", "bob"),
        _slot("s-03", "carol", scheduled_at=late),
        _slot("s-05", "dave"),
    )
    clock.at(30)
    await beat(_slot("s-04", "alice"))
    clock.at(60)
    await sched.pause("alice", "waiting for review")
    await sched.idle()
    clock.at(120)
    backend.fail_status(BackendUnavailableError("503 Service Unavailable"), times=2)
    await sched.complete("bob", "done")
    await sched.idle()
    for seconds in (122, 124):  # the two retries, each due a second after the last try
        clock.at(seconds)
        await sched.idle()
    clock.at(360)
    await sched.resume("alice")
    await sched.idle()
    clock.at(960)
    await sched.complete("alice", "report sent")
    await sched.idle()
    clock.at(1000)
    await sched.abort("alice", "wrong agent", actor=Actor.operator)
    await sched.idle()
    clock.at(1100)
    backend.fail_status(BackendRejectedError("422 unknown slot"))
    await beat(_slot("s-06", "erin"))
    clock.at(1200)
    await sched.complete("erin")
    await sched.idle()
    clock.at(1300)
    await beat(_slot("s-02", "bob"))
    clock.at(1500)
    await sched.complete("bob", "second run done")
    await sched.idle()
    clock.at(1600)
    host.hang_wakes("frank")
    backend.to_fire = [_slot("s-07", "frank")]
    await sched.heartbeat_once()
    backend.to_fire = []
    await sched.stop()  # the hung wake is cut off: s-07 stays dispatching
    sched.journal.close()
    host.heal()
    clock.at(1700)
    sched = start()
    try:
        await sched.recover()
        await sched.idle()
        clock.at(1800)
        await sched.complete("frank", "late but done")
        await sched.idle()
        clock.at(1900)
        await beat(_slot("s-08", "carol"))
        clock.at(1950)
        backend.fail_status(BackendUnavailableError("503 Service Unavailable"))
        await sched.pause("carol", "blocked on credentials")
        await sched.idle()
    finally:
        await sched.stop()
        sched.journal.close()


def build_audit_journal(url: str) -> None:
    """Write the scenario's journal (identifier ``host-a``) into the database at ``url``."""
    asyncio.run(_run(url))
