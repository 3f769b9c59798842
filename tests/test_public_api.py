"""The public surface: ``calsched.__all__`` is pinned, sorted, lazy and documented.

A name added to or dropped from the surface must change :data:`PUBLIC` here on purpose
(and docs/embedding.md, which lists them); everything else may change in any release.
"""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import calsched
from calsched.journal import Journal
from calsched.model import Slot, SlotState
from calsched.testing import InMemoryBackend, InMemoryHost

PUBLIC = [
    "Actor",
    "AgentBusyError",
    "AgentReport",
    "AgentStatus",
    "Backend",
    "BackendConflictError",
    "BackendError",
    "BackendRefusedError",
    "BackendRejectedError",
    "BackendUnavailableError",
    "CalschedError",
    "ConfigError",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "Host",
    "HttpBackend",
    "InvalidInputError",
    "InvalidTransitionError",
    "Journal",
    "JournalError",
    "JournalUnavailableError",
    "LeaseHeldError",
    "LeaseLostError",
    "LocalCalendar",
    "NoActiveSlotError",
    "OutboxRowNotFoundError",
    "QueuePolicy",
    "RejectedSlot",
    "Scheduler",
    "SchedulerSettings",
    "SchedulerStatus",
    "SchemaVersionError",
    "Slot",
    "SlotNotFoundError",
    "SlotState",
    "SlotTools",
    "SlotUpdate",
    "SlotView",
    "StaleSlotError",
    "ToolKey",
    "WakeFailedError",
    "WakeOptions",
    "WakeRequest",
    "__version__",
    "embedded_backend",
]


def test_all_is_pinned_and_sorted() -> None:
    """The surface is exactly :data:`PUBLIC`, in sorted order."""
    assert calsched.__all__ == PUBLIC
    assert sorted(calsched.__all__) == calsched.__all__


@pytest.mark.parametrize("name", [n for n in PUBLIC if n != "__version__"])
def test_each_name_is_its_home_module_object_and_documented(name: str) -> None:
    """Each name resolves to the object of the module that defines it, with a docstring."""
    value = getattr(calsched, name)
    home = importlib.import_module(value.__module__)
    assert getattr(home, name) is value
    assert inspect.getdoc(value), f"{name} has no docstring"


def test_every_error_of_the_tree_is_public() -> None:
    """The whole error tree (calsched.errors) is on the surface."""
    import calsched.errors

    assert set(calsched.errors.__all__) <= set(PUBLIC)


def test_version_and_unknown_names() -> None:
    """``__version__`` is the one of calsched._version; an unknown name is an
    AttributeError, as on any module; dir() lists the surface."""
    from calsched._version import __version__

    assert calsched.__version__ == __version__
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        calsched.Nope  # noqa: B018
    assert set(PUBLIC) <= set(dir(calsched))


def test_importing_the_package_imports_no_layer() -> None:
    """The surface is lazy: ``import calsched.errors`` (what every command does first)
    loads neither the scheduler, SQLAlchemy, pydantic nor the version's metadata."""
    probe = (
        "import sys, calsched.errors\n"
        "heavy = ['calsched.scheduler', 'calsched.model', 'sqlalchemy', 'pydantic',"
        " 'httpx', 'importlib.metadata']\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == ""


async def test_async_with_runs_and_stops_on_a_normal_exit(db_url: str) -> None:
    """``async with calsched.Scheduler(...)``: started on entry (the slot is woken),
    stopped on exit: the outbox flushed, the journal's writer closed."""
    journal = Journal.open(db_url, "host-a", upgrade=True)
    backend = InMemoryBackend([Slot(id="s1", agent_id="bob")])
    host = InMemoryHost(["bob"])
    settings = calsched.SchedulerSettings(identifier="host-a")
    try:
        async with calsched.Scheduler(settings, journal, backend, host) as scheduler:
            await scheduler.idle()
            while not host.accepted:
                await scheduler.idle()
            await scheduler.complete("bob", "done")
        assert scheduler._runner.stopped.is_set()
        assert scheduler._gateway.writer._closed
        assert [u.status for u in backend.updates_for("s1")][-1] is SlotState.completed
    finally:
        journal.close()


async def test_async_with_stops_when_the_block_raises(db_url: str) -> None:
    """An exception leaving the block stops the scheduler too, and propagates."""
    journal = Journal.open(db_url, "host-a", upgrade=True)
    settings = calsched.SchedulerSettings(identifier="host-a")
    made: list[calsched.Scheduler] = []

    async def fail_inside() -> None:
        async with calsched.Scheduler(
            settings, journal, InMemoryBackend(), InMemoryHost()
        ) as scheduler:
            made.append(scheduler)
            raise RuntimeError("boom")

    try:
        with pytest.raises(RuntimeError, match="boom"):
            await fail_inside()
        assert made[0]._runner.stopped.is_set()
        assert made[0]._gateway.writer._closed
        with pytest.raises(calsched.NoActiveSlotError):
            await made[0].current_slot("bob")
    finally:
        journal.close()
