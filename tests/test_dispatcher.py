"""The dispatcher's log lines: each step of a slot told once, after its commit.

Through a real Scheduler on SQLite and PostgreSQL (the fixtures of ``tests/test_scheduler.py``).
"""

from __future__ import annotations

import logging

import pytest

from calsched.scheduler.loglines import PER_SLOT_MAX
from calsched.testing import InMemoryBackend, InMemoryHost
from tests.test_scheduler import Factory, backend, beat, db, host, make, slot

__all__ = ["backend", "db", "host", "make"]  # fixtures, used by name


def has(record: logging.LogRecord, **fields: object) -> bool:
    """Whether the record carries these ``extra`` fields with these values."""
    return record.__dict__.items() >= fields.items()


def told(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    """The scheduler's records of ``event``."""
    return [r for r in caplog.records if r.name == "calsched.scheduler" and r.msg == event]


async def test_a_slot_is_told_received_dispatched_and_woken_once(
    make: Factory, backend: InMemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """One info line each, with the slot's fields, and the host the wake went to."""
    caplog.set_level(logging.INFO, logger="calsched")
    sched = make()
    await sched.recover()
    backend.to_fire = [slot("s1", agent="bob")]
    await beat(sched)
    (received,) = told(caplog, "slot received")
    assert has(received, slot_id="s1", agent_id="bob")
    (dispatched,) = told(caplog, "slot dispatched")
    assert has(dispatched, slot_id="s1", agent_id="bob", attempt=1, actor="scheduler")
    (woken,) = told(caplog, "slot woken")
    assert woken.levelno == logging.INFO
    assert has(woken, slot_id="s1", agent_id="bob", attempt=1, target="InMemoryHost")
    order = [r.msg for r in caplog.records if r.name == "calsched.scheduler"]
    assert order.index("slot received") < order.index("slot dispatched") < order.index("slot woken")


async def test_a_failed_wake_is_a_warning_naming_the_target(
    make: Factory, backend: InMemoryBackend, host: InMemoryHost, caplog: pytest.LogCaptureFixture
) -> None:
    """The wake failed: one warning with the host and the cause; no "woken" line."""
    caplog.set_level(logging.INFO, logger="calsched")
    host.fail_wakes("bob", "agent offline")
    sched = make()
    await sched.recover()
    backend.to_fire = [slot("s1", agent="bob")]
    await beat(sched)
    (failed,) = told(caplog, "wake failed")
    assert failed.levelno == logging.WARNING
    assert has(failed, slot_id="s1", agent_id="bob", target="InMemoryHost", recorded=True)
    assert "agent offline" in failed.cause  # type: ignore[attr-defined]
    assert told(caplog, "slot woken") == []


async def test_a_burst_is_one_summary_line_per_step(
    make: Factory, backend: InMemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """More than PER_SLOT_MAX slots in one beat: one "slots received" line, not one each."""
    caplog.set_level(logging.INFO, logger="calsched")
    count = PER_SLOT_MAX * 3
    sched = make()
    await sched.recover()
    backend.to_fire = [slot(f"s{n:03d}", agent=f"a{n}") for n in range(count)]
    await beat(sched)
    assert told(caplog, "slot received") == []
    (received,) = told(caplog, "slots received")
    assert has(
        received, count=count, agents=count, first_slot="s000", last_slot=f"s{count - 1:03d}"
    )
    (dispatched,) = told(caplog, "slots dispatched")
    assert has(dispatched, count=count, actor="scheduler")
    woken = sum(r.count for r in told(caplog, "slots woken"))  # type: ignore[attr-defined]
    assert woken + len(told(caplog, "slot woken")) == count
