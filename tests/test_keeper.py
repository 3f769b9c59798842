"""The lease keeper (calsched.scheduler.keeper): renews, and fails closed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from calsched.errors import JournalError, LeaseLostError
from calsched.journal import Journal
from calsched.journal.lease import Lease, death_lock_for
from calsched.metrics import Metrics
from calsched.model import Trigger
from calsched.scheduler.keeper import LeaseKeeper
from tests.conftest import FakeClock, request_for

TTL = 9.0


class Monotonic:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lease(sqlite_journal: Journal, clock: FakeClock) -> Iterator[Lease]:
    """An acquired lease on the SQLite journal, fencing it; released after."""
    lease = Lease(
        sqlite_journal.engine,
        "host-a",
        ttl_s=TTL,
        lock=death_lock_for(sqlite_journal.engine, "host-a"),
        clock=clock,
    )
    lease.acquire()
    sqlite_journal.fence(lease.fence)
    yield lease
    lease.release()


def keeper_for(lease: Lease, monotonic: Monotonic) -> LeaseKeeper:
    return LeaseKeeper(lease, every_s=TTL / 3, metrics=Metrics(), monotonic=monotonic)


def sample(keeper: LeaseKeeper, name: str, **labels: str) -> float | None:
    return keeper.metrics.registry.get_sample_value(name, labels or None)


async def test_renewal_pushes_the_expiry_and_counts(lease: Lease, clock: FakeClock) -> None:
    """A renewal moves expires_at one lease time past now; metrics say held and ok."""
    monotonic = Monotonic()
    keeper = keeper_for(lease, monotonic)
    clock.advance(3)
    monotonic.now += 3
    await keeper.renew_once()
    held = lease.read()
    assert held is not None
    assert held.expires_at == clock.now + lease.ttl
    assert keeper.last_ok == monotonic.now
    assert sample(keeper, "calsched_lease_renewals_total", outcome="ok") == 1
    assert sample(keeper, "calsched_lease_held") == 1
    assert sample(keeper, "calsched_lease_epoch") == 1


async def test_overslept_keeper_fails_closed(lease: Lease, sqlite_journal: Journal) -> None:
    """No renewal for a whole lease time (stopped, starved): lost, even if nobody took
    over, and every later journal write is refused."""
    monotonic = Monotonic()
    keeper = keeper_for(lease, monotonic)
    lost: list[str] = []
    keeper.fence.on_lost(lost.append)
    monotonic.now += TTL
    await keeper.renew_once()
    assert lost == [f"not renewed within the lease time ({TTL:g} s)"]
    with pytest.raises(LeaseLostError):
        sqlite_journal.apply(request_for("s1", Trigger.receive))
    assert sample(keeper, "calsched_lease_held") == 0
    assert sample(keeper, "calsched_lease_refused_writes") == 1


async def test_taken_over_lease_is_lost_at_the_next_renewal(
    lease: Lease, sqlite_journal: Journal, clock: FakeClock
) -> None:
    """Another process took over (ours expired): the renewal's ownership check fails."""
    monotonic = Monotonic()
    keeper = keeper_for(lease, monotonic)
    clock.advance(TTL + 1)
    other = Lease(sqlite_journal.engine, "host-a", ttl_s=TTL, lock=None, clock=clock)
    other.acquire()
    monotonic.now += 1  # this process itself saw little time pass
    await keeper.renew_once()
    assert keeper.fence.lost == "another process holds it now"
    assert not lease.locked  # the death lock is given up with the lease


async def test_failing_database_is_retried_until_the_lease_time(
    lease: Lease, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal that cannot reach the database is tried again; once a whole lease time
    passed without one, the lease is lost."""
    monotonic = Monotonic()
    keeper = keeper_for(lease, monotonic)

    def unreachable() -> None:
        raise JournalError("lease write failed: connection refused")

    monkeypatch.setattr(lease, "renew", unreachable)
    for _ in range(2):
        monotonic.now += TTL / 3
        await keeper.renew_once()
        assert keeper.fence.lost is None
    monotonic.now += TTL / 3
    await keeper.renew_once()
    assert keeper.fence.lost is not None
    assert sample(keeper, "calsched_lease_renewals_total", outcome="failed") == 3


def test_keeper_needs_an_acquired_lease(sqlite_journal: Journal) -> None:
    """A lease never acquired has no epoch to keep."""
    lease = Lease(sqlite_journal.engine, "host-a", ttl_s=TTL, lock=None)
    with pytest.raises(ValueError, match="acquired"):
        LeaseKeeper(lease, every_s=1.0)


async def test_status_shows_holder_epoch_and_state(lease: Lease, clock: FakeClock) -> None:
    """status(): the holder as last renewed, its epoch and expiry; lost says why."""
    monotonic = Monotonic()
    keeper = keeper_for(lease, monotonic)
    clock.advance(3)
    monotonic.now += 3
    await keeper.renew_once()
    shown = keeper.status().to_wire()
    assert shown["state"] == "held"
    assert shown["epoch"] == 1
    assert shown["pid"] == lease.pid
    assert shown["expires_at"] == (clock.now + lease.ttl).strftime("%Y-%m-%dT%H:%M:%S") + "Z"
    assert shown["renewals"] == 1
    keeper.fence.lose("epoch 2 took over")
    assert keeper.status().state == "lost"
    assert keeper.status().lost == "epoch 2 took over"
