"""The lease (calsched.journal.lease): acquisition rules, renewal, release, the fence,
and the database's one-current-slot-per-agent index. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from calsched.errors import AgentBusyError, LeaseHeldError, LeaseLostError
from calsched.journal import Journal
from calsched.journal.lease import (
    FileLock,
    Lease,
    bound_idle_transactions,
    death_lock_for,
    live_holders,
    read_holder,
)
from calsched.journal.schema import leases, slots
from calsched.journal.writer import GroupWriter
from calsched.model import SlotState, SlotView, Trigger
from tests.conftest import FakeClock, request_for

Drive = Callable[..., SlotView]
TTL = 20.0


@pytest.fixture
def make_lease(journal: Journal, clock: FakeClock) -> Iterator[Callable[..., Lease]]:
    """Leases on the test journal's database (death lock included), released after."""
    made: list[Lease] = []

    def _make(identifier: str = "host-a", *, pid: int = 100, **kwargs: object) -> Lease:
        lease = Lease(
            journal.engine,
            identifier,
            ttl_s=TTL,
            lock=death_lock_for(journal.engine, identifier),
            clock=clock,
            host="web-1",
            pid=pid,
            **kwargs,  # type: ignore[arg-type]
        )
        made.append(lease)
        return lease

    yield _make
    for lease in made:
        lease.release()


# -- acquisition -------------------------------------------------------------------------


def test_first_acquisition_writes_epoch_one(make_lease: Callable[..., Lease]) -> None:
    """An identifier never leased: epoch 1, this process named, the death lock held."""
    lease = make_lease()
    held = lease.acquire()
    assert (held.epoch, held.host, held.pid, held.locked) == (1, "web-1", 100, True)
    assert lease.takeover == "new"
    assert lease.read() == held


def test_live_holder_refused_with_one_line(
    make_lease: Callable[..., Lease], clock: FakeClock
) -> None:
    """A live holder (lock held, lease unexpired): the second is refused, naming it."""
    first = make_lease(pid=4242)
    first.acquire()
    second = make_lease(pid=7)
    with pytest.raises(LeaseHeldError) as caught:
        second.acquire()
    assert str(caught.value) == (
        "identifier 'host-a' is held by host web-1 pid 4242 since "
        f"{clock.now.strftime('%Y-%m-%dT%H:%M:%SZ')} (epoch 1)"
    )
    assert not second.locked  # the refused one holds nothing
    assert second.epoch is None


def test_release_lets_the_next_take_over_at_once(make_lease: Callable[..., Lease]) -> None:
    """A graceful stop releases: a restart does not wait for the expiry."""
    first = make_lease()
    first.acquire()
    first.release()
    second = make_lease()
    assert second.acquire().epoch == 2
    assert second.takeover == "expired"


def test_dead_holder_taken_over_at_once(make_lease: Callable[..., Lease]) -> None:
    """The death lock free while the row says its holder had it: the holder is dead."""
    first = make_lease()
    first.acquire()
    assert first.lock is not None
    first.lock.release()  # what the system does when the process dies
    second = make_lease()
    held = second.acquire()
    assert (held.epoch, held.locked, second.takeover) == (2, True, "dead_holder")
    with pytest.raises(LeaseLostError):
        first.renew()


def test_silent_holder_taken_over_after_expiry(
    make_lease: Callable[..., Lease], clock: FakeClock
) -> None:
    """Alive but silent (lock held, no renewal): taken over once expired, without the
    lock; the old holder's renewal then fails and it gives its lock up."""
    first = make_lease()
    first.acquire()
    second = make_lease()
    clock.advance(TTL - 1)
    with pytest.raises(LeaseHeldError):
        second.acquire()
    clock.advance(2)
    held = second.acquire()
    assert (held.epoch, held.locked, second.takeover) == (2, False, "expired")
    with pytest.raises(LeaseLostError):
        first.renew()
    assert not first.locked
    # The next renewal of the new holder takes the lock the old one gave up.
    assert second.renew().locked


def test_free_lock_proves_nothing_when_the_holder_runs_without_it(
    make_lease: Callable[..., Lease], clock: FakeClock
) -> None:
    """The holder took over by expiry (no lock); the silent one then died: a third
    process finds the lock free but must not take over a live, unexpired lease."""
    first = make_lease()
    first.acquire()
    clock.advance(TTL + 1)
    second = make_lease()
    second.acquire()
    assert first.lock is not None
    first.lock.release()  # the silent one dies
    third = make_lease()
    with pytest.raises(LeaseHeldError):
        third.acquire()
    assert not third.locked


def test_renewal_pushes_the_expiry(make_lease: Callable[..., Lease], clock: FakeClock) -> None:
    """Renewals keep a lease live past its first expiry; a second process is refused."""
    first = make_lease()
    first.acquire()
    for _ in range(5):
        clock.advance(TTL / 3)
        first.renew()
    assert first.renewals == 5
    with pytest.raises(LeaseHeldError):
        make_lease().acquire()


def test_identifiers_do_not_touch(make_lease: Callable[..., Lease]) -> None:
    """Two identifiers on one database are leased independently, each at epoch 1."""
    a = make_lease("host-a")
    b = make_lease("host-b")
    assert a.acquire().epoch == 1
    assert b.acquire().epoch == 1
    assert a.locked
    assert b.locked


def test_lock_file_is_private(sqlite_url: str, tmp_path: Path) -> None:
    """The SQLite death lock is a 0600 file beside the database, one per identifier."""
    journal = Journal.open(sqlite_url, "host-a", upgrade=True)
    try:
        lock = death_lock_for(journal.engine, "host-a")
        assert isinstance(lock, FileLock)
        assert lock.try_acquire()
        assert lock.path.parent == tmp_path
        assert lock.path.stat().st_mode & 0o777 == 0o600
        other = death_lock_for(journal.engine, "host-a")
        assert other is not None
        assert not other.try_acquire()
        assert death_lock_for(journal.engine, "host-b").try_acquire()  # type: ignore[union-attr]
        lock.release()
        assert other.try_acquire()
        other.release()
    finally:
        journal.close()


def test_no_death_lock_in_memory() -> None:
    """An in-memory SQLite journal is one process's: nothing to lock."""
    journal = Journal.open("sqlite://", "host-a", upgrade=True)
    try:
        assert death_lock_for(journal.engine, "host-a") is None
    finally:
        journal.close()


# -- the fence ---------------------------------------------------------------------------


def test_fence_refuses_writes_after_a_takeover(
    journal: Journal,
    make_lease: Callable[..., Lease],
    clock: FakeClock,
    snapshot: Callable[[Journal], object],
) -> None:
    """Every write checks the epoch in its transaction: after a takeover, nothing lands."""
    old = make_lease()
    old.acquire()
    assert old.fence is not None
    journal.fence(old.fence)
    journal.apply(request_for("s1", Trigger.receive))  # under the current epoch: fine
    clock.advance(TTL + 1)
    make_lease().acquire()
    before = snapshot(journal)
    with pytest.raises(LeaseLostError, match="epoch 2 took over"):
        journal.apply(request_for("s1", Trigger.dispatch))
    with pytest.raises(LeaseLostError):  # refused from now on, without asking again
        journal.mark_delivered(1)
    assert snapshot(journal) == before
    assert old.fence.refused == 2
    assert old.fence.lost == "epoch 2 took over"


def test_fence_refuses_a_group_of_the_group_writer(
    journal: Journal, make_lease: Callable[..., Lease], clock: FakeClock
) -> None:
    """The group writer runs the fence once per transaction: the whole group is refused."""
    old = make_lease()
    old.acquire()
    assert old.fence is not None
    journal.fence(old.fence)
    lost: list[str] = []
    old.fence.on_lost(lost.append)
    writer = GroupWriter(journal.engine, check=journal.check_fence)
    try:
        journal_apply = journal.apply_in
        writer.submit(
            lambda conn: journal_apply(conn, [request_for("s1", Trigger.receive)])
        ).result()
        clock.advance(TTL + 1)
        make_lease().acquire()
        futures = [
            writer.submit(
                lambda conn, i=i: journal_apply(conn, [request_for(f"t{i}", Trigger.receive)])
            )
            for i in range(5)
        ]
        for future in futures:
            with pytest.raises(LeaseLostError):
                future.result()
    finally:
        writer.close()
    assert lost == ["epoch 2 took over"]
    assert [v.slot_id for v in journal.history()] == ["s1"]


def test_unfenced_journal_writes_without_a_lease(journal: Journal, drive: Drive) -> None:
    """A journal opened without a lease (tests, embedding) is not fenced at all."""
    assert journal.fenced is None
    drive(journal, "s1", SlotState.completed)


def test_released_lease_refuses_its_own_late_writes(
    journal: Journal, make_lease: Callable[..., Lease]
) -> None:
    """After another process took over a released lease, the old fence refuses."""
    old = make_lease()
    old.acquire()
    assert old.fence is not None
    journal.fence(old.fence)
    old.release()
    make_lease().acquire()
    with pytest.raises(LeaseLostError):
        journal.apply(request_for("s1", Trigger.receive))


def test_row_lock_blocks_a_takeover_until_the_write_commits(
    journal: Journal, make_lease: Callable[..., Lease], clock: FakeClock
) -> None:
    """A takeover waits for a fenced write in flight (FOR SHARE on PostgreSQL, BEGIN
    IMMEDIATE on SQLite): the write commits under its epoch, or not at all."""
    old = make_lease()
    old.acquire()
    assert old.fence is not None
    journal.fence(old.fence)
    clock.advance(TTL + 1)
    inside = threading.Event()
    go_on = threading.Event()
    done: list[int] = []

    def slow_write() -> None:
        with journal._write() as conn:  # the fence ran: this epoch is current
            inside.set()
            go_on.wait(5)
            journal.apply_in(conn, [request_for("s1", Trigger.receive)])

    writer = threading.Thread(target=slow_write)
    writer.start()
    assert inside.wait(5)
    taker = threading.Thread(target=lambda: done.append(make_lease().acquire().epoch))
    taker.start()
    taker.join(0.5)
    assert not done  # blocked behind the write in flight
    go_on.set()
    writer.join(5)
    taker.join(10)
    assert done == [2]
    assert journal.get("s1") is not None  # committed under epoch 1, before the takeover
    with pytest.raises(LeaseLostError):
        journal.apply(request_for("s1", Trigger.dispatch))


# -- one current slot per agent, in the database -------------------------------------------


def test_unique_index_refuses_a_second_current_slot(journal: Journal, drive: Drive) -> None:
    """Past the journal's own check (a raw update), the index still refuses."""
    drive(journal, "s1", SlotState.in_progress)
    drive(journal, "s2", SlotState.pending)
    stmt = update(slots).where(slots.c.slot_id == "s2").values(state="dispatching")
    with pytest.raises(AgentBusyError), journal._write() as conn:
        conn.execute(stmt)
    view = journal.get("s2")
    assert view is not None
    assert view.state is SlotState.pending


def test_racing_dispatchers_exactly_one_wins(
    open_journal: Callable[..., Journal], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers (two journals, as two processes would have) dispatch two slots of
    one agent at once, both past the decision check: exactly one commits, the other
    gets AgentBusyError, and the agent has one current slot."""
    first = open_journal("host-a")
    second = open_journal("host-a")
    first.apply_many([request_for("s1", Trigger.receive), request_for("s2", Trigger.receive)])
    from calsched.journal.transitions import Transitions

    # Both writers decide as if the other had not dispatched: the index must decide.
    monkeypatch.setattr(Transitions, "_current_for_agent", lambda self, *a: None)
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def dispatch(journal: Journal, slot_id: str) -> None:
        barrier.wait(5)
        try:
            outcomes[slot_id] = journal.apply(request_for(slot_id, Trigger.dispatch)).state_to
        except AgentBusyError as exc:
            outcomes[slot_id] = exc

    threads = [
        threading.Thread(target=dispatch, args=(first, "s1")),
        threading.Thread(target=dispatch, args=(second, "s2")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    won = [s for s, o in outcomes.items() if o is SlotState.dispatching]
    lost = [s for s, o in outcomes.items() if isinstance(o, AgentBusyError)]
    assert len(won) == 1, outcomes
    assert len(lost) == 1, outcomes
    with first.engine.connect() as conn:
        current = (
            conn.execute(select(slots.c.slot_id).where(slots.c.state == "dispatching"))
            .scalars()
            .all()
        )
    assert current == won


def test_lease_row_readable_by_audit(journal: Journal, make_lease: Callable[..., Lease]) -> None:
    """The lease table is plain SQL: an auditor reads who holds what."""
    make_lease("host-a").acquire()
    make_lease("host-b").acquire()
    with journal.engine.connect() as conn:
        rows = conn.execute(
            select(leases.c.identifier, leases.c.epoch).order_by(leases.c.identifier)
        ).all()
        assert [tuple(r) for r in rows] == [("host-a", 1), ("host-b", 1)]
        held = read_holder(conn, "host-b")
    assert held is not None
    assert held.host == "web-1"


def test_live_holders_leave_out_the_dead_and_the_expired(
    journal: Journal, make_lease: Callable[..., Lease], clock: FakeClock
) -> None:
    """live_holders: unexpired and (death lock held, or never held): what db upgrade
    must not run under."""
    alive = make_lease("host-a")
    alive.acquire()
    dead = make_lease("host-b")
    dead.acquire()
    assert dead.lock is not None
    dead.lock.release()  # killed
    assert [h.identifier for h in live_holders(journal.engine, clock=clock)] == ["host-a"]
    clock.advance(TTL + 1)
    assert live_holders(journal.engine, clock=clock) == []


def test_two_identifiers_under_load_do_not_cross(
    open_journal: Callable[..., Journal], clock: FakeClock
) -> None:
    """Two identifiers, each fenced by its own lease, write at once through their own
    group writers (the scheduler's path) for agents of the same names: no write is
    refused, no row of one lands under the other, and each journal verifies."""
    per_identifier = 60
    journals = {name: open_journal(name) for name in ("host-a", "host-b")}
    leases_held: list[Lease] = []
    writers: list[GroupWriter] = []
    try:
        for name, journal in journals.items():
            lease = Lease(
                journal.engine,
                name,
                ttl_s=TTL,
                lock=death_lock_for(journal.engine, name),
                clock=clock,
            )
            lease.acquire()
            leases_held.append(lease)
            journal.fence(lease.fence)
            writers.append(GroupWriter(journal.engine, check=journal.check_fence))
        futures = []
        for i in range(per_identifier):
            for (name, journal), writer in zip(journals.items(), writers, strict=True):
                agent = f"agent-{i % 4}"
                slot = f"{name}-s{i}"
                apply = journal.apply_in
                futures.append(
                    writer.submit(
                        lambda conn, apply=apply, slot=slot, agent=agent: apply(
                            conn,
                            [
                                request_for(slot, Trigger.receive, agent_id=agent),
                                request_for(slot, Trigger.abort),
                            ],
                        )
                    )
                )
        for future in futures:
            future.result(timeout=60)
    finally:
        for writer in writers:
            writer.close()
    for name, journal in journals.items():
        mine = journal.history()
        assert len(mine) == per_identifier
        assert {v.identifier for v in mine} == {name}
        assert all(v.slot_id.startswith(f"{name}-") for v in mine)
        assert {e.identifier for e in journal.events()} == {name}
        assert journal.verify() == []
    for lease in leases_held:
        assert lease.fence is not None
        assert lease.fence.refused == 0
        held = lease.read()
        assert held is not None
        assert held.epoch == 1
        lease.release()


def test_idle_transactions_bounded_on_postgres(journal: Journal) -> None:
    """On PostgreSQL every later session ends a transaction left idle for a lease time
    (a stopped holder's row locks must not block a takeover for ever); nothing on SQLite."""
    listeners = len(list(journal.engine.pool.dispatch.connect))
    bound_idle_transactions(journal.engine, 2.5)
    added = len(list(journal.engine.pool.dispatch.connect)) - listeners
    with journal.engine.connect() as conn:
        if journal.engine.dialect.name == "postgresql":
            shown = conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar_one()
            assert shown == "2500ms"
            assert added == 1
        else:
            assert added == 0
