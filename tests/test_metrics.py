"""Tests for calsched.metrics: the registry alone, then fed by a real scheduler (both DBs)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from calsched import __version__
from calsched.errors import BackendConflictError, BackendRejectedError, BackendUnavailableError
from calsched.journal import Journal
from calsched.metrics import DELIVERY_OUTCOMES, Metrics
from calsched.model import Slot, parse
from calsched.scheduler import Scheduler
from calsched.settings import SchedulerSettings
from calsched.testing import InMemoryBackend, InMemoryHost


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of ``name`` in the rendered text, by its labels."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_build_info_names_the_version() -> None:
    assert samples(Metrics(), "calsched_build_info") == {(("version", __version__),): 1.0}


def test_active_slots_has_every_live_state_from_the_start() -> None:
    metrics = Metrics()
    expected = {"pending": 0.0, "dispatching": 0.0, "in_progress": 0.0, "paused": 0.0}
    by_state = {dict(k)["state"]: v for k, v in samples(metrics, "calsched_active_slots").items()}
    assert by_state == expected
    metrics.count_active(lambda: {"paused": 2, "pending": 5})
    by_state = {dict(k)["state"]: v for k, v in samples(metrics, "calsched_active_slots").items()}
    assert by_state == {**expected, "paused": 2.0, "pending": 5.0}


def test_delivery_outcomes_start_at_zero() -> None:
    found = samples(Metrics(), "calsched_outbox_deliveries_total")
    assert found == {(("outcome", o),): 0.0 for o in DELIVERY_OUTCOMES}


def test_last_heartbeat_is_zero_until_one_succeeds() -> None:
    found = samples(Metrics(), "calsched_heartbeat_last_success_timestamp_seconds")
    assert found == {(): 0.0}


# -- fed by a real scheduler ----------------------------------------------------------


def slot(slot_id: str, agent: str) -> Slot:
    return parse(Slot, {"id": slot_id, "agent_id": agent, "title": "t"})


@pytest.fixture
async def rig(db_url: str) -> AsyncIterator[tuple[Scheduler, InMemoryBackend, Metrics]]:
    journal = Journal.open(db_url, "host-a", upgrade=True)
    backend = InMemoryBackend()
    metrics = Metrics()
    settings = SchedulerSettings(
        identifier="host-a", outbox_backoff_initial_s=0.01, outbox_backoff_max_s=0.05
    )
    sched = Scheduler(settings, journal, backend, InMemoryHost(), metrics=metrics)
    await sched.recover()
    try:
        yield sched, backend, metrics
    finally:
        await sched.stop()
        journal.close()


def delivered(metrics: Metrics) -> dict[str, float]:
    found = samples(metrics, "calsched_outbox_deliveries_total")
    return {dict(k)["outcome"]: v for k, v in found.items()}


async def test_a_scheduler_feeds_every_new_metric(
    rig: tuple[Scheduler, InMemoryBackend, Metrics],
) -> None:
    sched, backend, metrics = rig
    # alice's update is delivered after one passing fault; bob's is dead-lettered;
    # carol's meets a 409 and is reconciled; dave's two slots: one in progress, one waits.
    backend.fail_status(BackendUnavailableError("503", status_code=503))
    backend.to_fire = [slot("s-a", "alice")]
    await sched.heartbeat_once()
    await sched.idle()
    for _ in range(200):  # the retry is due after a tiny backoff (real time)
        if sched.journal.outbox_counts().pending == 0:
            break
        await asyncio.sleep(0.01)
        await sched.idle()
    backend.fail_status(BackendRejectedError("404", status_code=404))
    backend.to_fire = [slot("s-b", "bob")]
    await sched.heartbeat_once()
    await sched.idle()
    backend.fail_status(BackendConflictError("409", status="aborted", reason="timed out"))
    backend.to_fire = [slot("s-c", "carol")]
    await sched.heartbeat_once()
    await sched.idle()
    backend.to_fire = [slot("s-d1", "dave"), slot("s-d2", "dave")]
    await sched.heartbeat_once()
    await sched.idle()

    assert delivered(metrics) == {
        "delivered": 2.0,  # alice's in_progress at the second try, dave's first slot
        "retried": 1.0,
        "dead_lettered": 1.0,
        "reconciled": 1.0,
    }
    active = {dict(k)["state"]: v for k, v in samples(metrics, "calsched_active_slots").items()}
    # alice, bob (his dead letter leaves the slot in progress here) and dave's first.
    assert active == {"pending": 1.0, "dispatching": 0.0, "in_progress": 3.0, "paused": 0.0}
    last = samples(metrics, "calsched_heartbeat_last_success_timestamp_seconds")
    last_ok = sched.status().backend.last_ok
    assert last_ok is not None
    assert last == {(): last_ok.timestamp()}

    await sched.pause("alice", "lunch")
    await sched.complete("dave", "done")
    await sched.idle()
    active = {dict(k)["state"]: v for k, v in samples(metrics, "calsched_active_slots").items()}
    assert active["paused"] == 1.0
    assert active["pending"] == 0.0  # dave's second slot started
