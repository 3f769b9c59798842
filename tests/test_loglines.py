"""LogLines: one line per slot while few come together, one summary line for a burst."""

from __future__ import annotations

import asyncio
import logging

import pytest

from calsched.scheduler.loglines import LogLines

LOGGER = "calsched.test.loglines"


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


async def test_few_lines_in_one_turn_are_each_printed(caplog: pytest.LogCaptureFixture) -> None:
    """Up to ``most`` lines of one turn: each its own record, with its fields."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    lines = LogLines(logging.getLogger(LOGGER), "slot woken", "slots woken", most=3)
    for n in range(3):
        lines.add(slot_id=f"s{n}", agent_id="bob")
    assert records(caplog) == []  # told at the end of the turn
    await asyncio.sleep(0)
    assert [(r.msg, r.slot_id) for r in records(caplog)] == [  # type: ignore[attr-defined]
        ("slot woken", "s0"),
        ("slot woken", "s1"),
        ("slot woken", "s2"),
    ]


async def test_a_burst_is_one_summary_with_what_all_share(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """More than ``most``: one summary (count, agents, first and last slot, shared
    fields); each slot's line only at debug."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    lines = LogLines(logging.getLogger(LOGGER), "wake failed", "wakes failed", most=2)
    for n in range(5):
        lines.add(slot_id=f"s{n}", agent_id=f"a{n % 2}", cause="host down", attempt=n)
    await asyncio.sleep(0)
    (summary,) = records(caplog)
    assert summary.msg == "wakes failed"
    fields = {k: summary.__dict__.get(k) for k in ("count", "agents", "first_slot", "last_slot")}
    assert fields == {"count": 5, "agents": 2, "first_slot": "s0", "last_slot": "s4"}
    assert summary.__dict__["cause"] == "host down"
    assert "attempt" not in summary.__dict__
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    for n in range(3):
        lines.add(slot_id=f"t{n}", agent_id="bob")
    await asyncio.sleep(0)
    assert [r.levelno for r in records(caplog)] == [logging.INFO] + [logging.DEBUG] * 3


def test_a_disabled_level_gathers_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """Below the logger's level nothing is kept; without a loop a line is told at once."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    lines = LogLines(logging.getLogger(LOGGER), "slot woken", "slots woken")
    lines.add(slot_id="s1")
    assert lines._pending == []
    caplog.set_level(logging.INFO, logger=LOGGER)
    lines.add(slot_id="s2")
    assert [r.msg for r in records(caplog)] == ["slot woken"]
