"""calsched.testing: the in-memory host and backend (the fault plan: tests/test_faults.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from calsched.errors import BackendConflictError, BackendUnavailableError, WakeFailedError
from calsched.model import AgentReport, AgentStatus, HeartbeatRequest, Slot, SlotState, SlotUpdate
from calsched.ports import WakeRequest
from calsched.testing import InMemoryBackend, InMemoryHost

T0 = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)


def wake(agent_id: str = "bob", slot_id: str = "s1", attempt: int = 1) -> WakeRequest:
    """A wake request for ``agent_id``."""
    return WakeRequest(
        agent_id=agent_id,
        message="go",
        source=f"calendar:slot-{slot_id}",
        slot_id=slot_id,
        attempt=attempt,
    )


def update(status: SlotState = SlotState.in_progress) -> SlotUpdate:
    """A status update."""
    return SlotUpdate(identifier="host-a", status=status, attempt=1, occurred_at=T0)


# -- InMemoryHost -------------------------------------------------------------------------


async def test_host_records_and_accepts_wakes() -> None:
    """Every wake is recorded in order; accepted ones also in .accepted."""
    host = InMemoryHost()
    await host.wake_agent(wake("bob", "s1"))
    await host.wake_agent(wake("alice", "s2"))
    assert [w.slot_id for w in host.wakes] == ["s1", "s2"]
    assert host.accepted == host.wakes
    assert host.wakes_for("alice") == [wake("alice", "s2")]


async def test_host_fails_wakes_for_an_agent_until_healed() -> None:
    """fail_wakes makes that agent's wakes raise WakeFailedError with the cause."""
    host = InMemoryHost()
    host.fail_wakes("bob", "agent is offline")
    with pytest.raises(WakeFailedError, match="agent is offline") as caught:
        await host.wake_agent(wake("bob"))
    assert caught.value.agent_id == "bob"
    await host.wake_agent(wake("alice"))  # other agents are unaffected
    host.heal("bob")
    await host.wake_agent(wake("bob", "s3"))
    assert len(host.wakes) == 3
    assert [w.agent_id for w in host.accepted] == ["alice", "bob"]


async def test_host_hangs_wakes_until_healed() -> None:
    """hang_wakes holds the wake (recorded, not accepted) until heal() releases it."""
    host = InMemoryHost()
    host.hang_wakes("bob")
    task = asyncio.create_task(host.wake_agent(wake("bob")))
    await asyncio.sleep(0.01)
    assert not task.done()
    assert len(host.wakes) == 1
    assert host.accepted == []
    host.heal()
    await asyncio.wait_for(task, 1)
    assert host.accepted == [wake("bob")]


async def test_a_hung_wake_can_be_cancelled() -> None:
    """A hung wake ends when its caller cancels it (as a wake timeout does)."""
    host = InMemoryHost()
    host.hang_wakes("bob")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(host.wake_agent(wake("bob")), 0.02)
    assert host.accepted == []


async def test_a_released_wake_still_fails_if_told_to() -> None:
    """A hung wake survives healing another agent; once released it obeys the faults then."""
    host = InMemoryHost()
    host.hang_wakes("bob")
    task = asyncio.create_task(host.wake_agent(wake("bob")))
    await asyncio.sleep(0.01)
    host.heal("alice")
    await asyncio.sleep(0.01)
    assert not task.done()
    host.heal("bob")
    host.fail_wakes("bob", "gone")  # set after the release, before the wake resumes
    with pytest.raises(WakeFailedError):
        await asyncio.wait_for(task, 1)


async def test_host_lists_agents() -> None:
    """Agents given as ids are idle reports; list_agents returns a copy."""
    report = AgentReport(id="carol", status=AgentStatus.busy)
    host = InMemoryHost(["bob", report])
    agents = await host.list_agents()
    assert agents == [AgentReport(id="bob", status=AgentStatus.idle), report]
    agents.clear()
    assert len(await host.list_agents()) == 2


# -- InMemoryBackend ----------------------------------------------------------------------


async def test_backend_serves_slots_and_records_beats() -> None:
    """Every beat returns to_fire and restart_pending, and is recorded."""
    backend = InMemoryBackend([Slot(id="s1", agent_id="bob")])
    backend.restart_pending = True
    beat = HeartbeatRequest(identifier="host-a", captured_at=T0)
    response, rejected = await backend.heartbeat(beat)
    assert [s.id for s in response.slots_to_fire] == ["s1"]
    assert response.restart_pending is True
    assert rejected == []
    assert backend.heartbeats == [beat]


async def test_backend_records_each_key_once() -> None:
    """A replayed idempotency key is acknowledged and counted, not recorded twice."""
    backend = InMemoryBackend()
    await backend.send_status("s1", update(), "k1")
    await backend.send_status("s1", update(), "k1")
    await backend.send_status("s1", update(SlotState.completed), "k2")
    assert [k for _s, _u, k in backend.updates] == ["k1", "k2"]
    assert [u.status for u in backend.updates_for("s1")] == [
        SlotState.in_progress,
        SlotState.completed,
    ]
    assert backend.replays == 1


async def test_backend_queued_errors_then_success() -> None:
    """Queued errors are raised once each, in order, before updates are recorded."""
    backend = InMemoryBackend()
    backend.fail_status(BackendUnavailableError("503", status_code=503), times=2)
    backend.fail_heartbeat(BackendUnavailableError("down"))
    for _ in range(2):
        with pytest.raises(BackendUnavailableError):
            await backend.send_status("s1", update(), "k1")
    await backend.send_status("s1", update(), "k1")
    with pytest.raises(BackendUnavailableError):
        await backend.heartbeat(HeartbeatRequest(identifier="host-a", captured_at=T0))
    assert len(backend.updates) == 1
    assert len(backend.heartbeats) == 1


async def test_backend_held_status_conflicts() -> None:
    """hold() answers another status with a conflict carrying the held one."""
    backend = InMemoryBackend()
    backend.hold("s1", "aborted", "watchdog")
    with pytest.raises(BackendConflictError) as caught:
        await backend.send_status("s1", update(SlotState.completed), "k1")
    assert (caught.value.status, caught.value.reason) == ("aborted", "watchdog")
    await backend.send_status("s1", update(SlotState.aborted), "k2")
    await backend.aclose()
    assert backend.closed


def test_testing_module_does_not_import_pytest_or_uvicorn() -> None:
    """Importing calsched.testing stays light: no pytest, and no uvicorn until serving."""
    code = "import sys, calsched.testing; print('pytest' in sys.modules, 'uvicorn' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]


def test_fault_plan_is_the_backends_own() -> None:
    """calsched.testing re-exports the fault types of calsched.backend.faults, not copies."""
    from calsched import testing
    from calsched.backend import faults

    for name in ("Fault", "FaultKind", "FaultPlan", "FaultRoute"):
        assert getattr(testing, name) is getattr(faults, name)
