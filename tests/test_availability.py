"""The journal's availability: one line when writes start failing, one when they are back."""

from __future__ import annotations

import logging

import pytest

from calsched.errors import JournalUnavailableError
from calsched.journal.availability import Availability


def full() -> JournalUnavailableError:
    """What a write on a full disk raises."""
    return JournalUnavailableError("journal", "disk full", "database or disk is full")


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages logged so far."""
    return [r.getMessage() for r in caplog.records if r.name == "calsched.journal"]


def test_an_episode_is_one_line_however_many_writes_fail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """500 failed writes say "journal unavailable: disk full" once; the next commit says
    it is back, with the count."""
    caplog.set_level(logging.INFO, logger="calsched")
    state = Availability()
    for _ in range(500):
        state.failed(full())
    assert state.cause == "disk full"
    state.committed()
    state.committed()
    said = lines(caplog)
    assert len(said) == 2
    assert said[0].startswith("journal unavailable: disk full (database or disk is full)")
    assert said[1] == "journal available again after 500 failed writes (disk full)"
    assert (state.cause, state.failures, state.episodes) == (None, 0, 1)


def test_a_new_cause_is_said_and_a_new_episode_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cause that changes mid-episode is news; a failure after recovery is a new one."""
    caplog.set_level(logging.INFO, logger="calsched")
    state = Availability()
    state.failed(full())
    state.failed(JournalUnavailableError("journal", "disk I/O error", "disk I/O error"))
    state.committed()
    state.failed(full())
    said = lines(caplog)
    assert [m.split(" (")[0] for m in said] == [
        "journal unavailable: disk full",
        "journal unavailable: disk I/O error",
        "journal available again after 2 failed writes",
        "journal unavailable: disk full",
    ]
    assert state.episodes == 2


def test_commits_without_an_episode_say_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """The hot path logs nothing."""
    caplog.set_level(logging.DEBUG, logger="calsched")
    state = Availability()
    for _ in range(10):
        state.committed()
    assert lines(caplog) == []
