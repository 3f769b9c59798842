"""Tests for calsched.scheduler.journal_hold: the outbox held while the journal fails."""

from __future__ import annotations

import logging

import pytest

from calsched.errors import JournalError, JournalUnavailableError
from calsched.journal.availability import Availability
from calsched.scheduler.journal_hold import JournalHold
from calsched.settings import SchedulerSettings
from tests.conftest import FakeClock

SETTINGS = SchedulerSettings(
    identifier="host-a", outbox_backoff_initial_s=1.0, outbox_backoff_max_s=8.0
)


def hold_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    """The hold's lines at ``level``."""
    return [
        r
        for r in caplog.records
        if r.levelno == level and "outbox deliveries held" in r.getMessage()
    ]


def test_a_failure_holds_until_its_backoff_passed(clock: FakeClock) -> None:
    """After a failure nothing is delivered for a step; after the step, deliveries resume."""
    hold = JournalHold(SETTINGS, Availability(), clock=clock)
    assert not hold.held
    hold.failed(JournalError("journal read failed"))
    assert hold.held
    clock.advance(1.0)  # the first step is at most the initial backoff
    assert not hold.held


def test_a_failure_while_held_is_not_a_second_step(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Deliveries failing in the same pass hold the outbox once and say it once."""
    hold = JournalHold(SETTINGS, Availability(), clock=clock)
    with caplog.at_level(logging.DEBUG, logger="calsched.scheduler"):
        hold.failed(JournalError("journal write failed"))
        hold.failed(JournalError("journal write failed"))
    assert len(hold_lines(caplog, logging.ERROR)) == 1


def test_a_cause_the_writer_named_is_logged_at_debug(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A passing fault the journal writer already said is not said again at error."""
    availability = Availability()
    availability.cause = "disk full"
    hold = JournalHold(SETTINGS, availability, clock=clock)
    with caplog.at_level(logging.DEBUG, logger="calsched.scheduler"):
        hold.failed(JournalUnavailableError("journal write", "disk full", "EFBIG"))
    assert hold_lines(caplog, logging.ERROR) == []
    assert len(hold_lines(caplog, logging.DEBUG)) == 1


def test_the_wait_doubles_while_the_journal_keeps_failing(clock: FakeClock) -> None:
    """The n-th failure in a row waits up to initial x 2^(n-1), capped at the maximum."""
    hold = JournalHold(SETTINGS, Availability(), clock=clock)
    for _ in range(3):
        hold.failed(JournalError("journal write failed"))
        clock.advance(4.0)  # past steps of 1 and 2; the third (2 to 4 s) has passed too
    hold.failed(JournalError("journal write failed"))  # the fourth: 4 to 8 s
    clock.advance(3.9)
    assert hold.held


def test_recovered_says_so_once_and_resets(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The first mark after a failure logs that deliveries resume; later marks say nothing."""
    hold = JournalHold(SETTINGS, Availability(), clock=clock)
    hold.failed(JournalError("journal write failed"))
    with caplog.at_level(logging.INFO, logger="calsched.scheduler"):
        hold.recovered()
        hold.recovered()
    resumed = [r for r in caplog.records if "outbox deliveries resume" in r.getMessage()]
    assert len(resumed) == 1
    assert not hold.held
