"""The group writer: waiting work commits in one transaction, each caller gets its own outcome.

Runs on every database (``db_url``). The writer is held busy on a gate so that the work
submitted meanwhile is known to be waiting when it comes round.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from sqlalchemy import Connection, event, text

from calsched.errors import InvalidTransitionError, JournalError
from calsched.journal import Journal, TransitionRequest
from calsched.journal.store import Applied
from calsched.journal.writer import GroupWriter
from calsched.model import Actor, Slot, SlotState, Trigger

T = Trigger
Count = Callable[[Journal, str], int]


@pytest.fixture
def writer(journal: Journal) -> Iterator[GroupWriter]:
    """A group writer on the journal's engine, closed after the test."""
    w = GroupWriter(journal.engine)
    yield w
    w.close()


class Gate:
    """Work that holds the writer until :meth:`open` is called."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()

    def __call__(self, conn: Connection) -> str:
        self.entered.set()
        assert self._open.wait(10), "the test never opened the gate"
        return "gate"

    def open(self) -> None:
        self._open.set()


def receive(journal: Journal, slot_id: str, agent_id: str) -> Callable[[Connection], Applied]:
    slot = Slot(id=slot_id, agent_id=agent_id, title=slot_id)
    request = TransitionRequest(slot_id, T.receive, Actor.scheduler, slot=slot)
    return lambda conn: journal.apply_in(conn, [request])


def held(writer: GroupWriter, works: list[Callable[[Connection], Any]]) -> list[Future[Any]]:
    """Submit ``works`` while the writer is busy, so they are waiting together; then go."""
    gate = Gate()
    first = writer.submit(gate)
    assert gate.entered.wait(10)
    futures = [writer.submit(w) for w in works]
    gate.open()
    assert first.result(10) == "gate"
    for f in futures:
        f.exception(10)  # wait for each outcome, whatever it is
    return futures


def test_waiting_work_commits_in_one_transaction(
    journal: Journal, writer: GroupWriter, row_count: Count
) -> None:
    """Twenty callers waiting together cost one commit, and each gets its own result."""
    commits: list[int] = []
    event.listen(journal.engine, "commit", lambda conn: commits.append(1))
    futures = held(writer, [receive(journal, f"s{i}", f"a{i}") for i in range(20)])
    assert [f.result().events[0].slot_id for f in futures] == [f"s{i}" for i in range(20)]
    assert len(commits) == 2  # the gate alone, then the twenty together
    assert (writer.groups, writer.items) == (2, 21)
    assert row_count(journal, "events") == 20


def test_a_refused_request_fails_alone(
    journal: Journal, writer: GroupWriter, row_count: Count
) -> None:
    """An invalid transition in a group is its caller's error; its neighbours commit."""
    bad = TransitionRequest("nope", T.complete, Actor.agent)
    journal.apply(
        TransitionRequest("s0", T.receive, Actor.scheduler, slot=Slot(id="s0", agent_id="a"))
    )
    twice = TransitionRequest("s0", T.woke, Actor.scheduler)  # s0 is pending: refused
    futures = held(
        writer,
        [
            receive(journal, "s1", "a1"),
            lambda conn: journal.apply_in(conn, [bad]),
            lambda conn: journal.apply_in(conn, [twice]),
            receive(journal, "s2", "a2"),
        ],
    )
    assert futures[0].result().events[0].slot_id == "s1"
    assert "nope" in str(futures[1].exception())
    assert isinstance(futures[2].exception(), InvalidTransitionError)
    assert futures[3].result().events[0].slot_id == "s2"
    assert writer.groups == 2  # nobody was retried: the refusals wrote nothing
    assert row_count(journal, "events") == 3
    s0 = journal.get("s0")
    assert s0 is not None
    assert s0.state is SlotState.pending


def test_a_database_error_costs_nobody_else_their_commit(
    journal: Journal, writer: GroupWriter, row_count: Count
) -> None:
    """A write that fails in the database rolls the group back; the others commit alone."""

    def broken(conn: Connection) -> None:
        conn.execute(text("INSERT INTO no_such_table VALUES (1)"))

    futures = held(writer, [receive(journal, "s1", "a1"), broken, receive(journal, "s2", "a2")])
    assert futures[0].result().events[0].slot_id == "s1"
    assert isinstance(futures[1].exception(), JournalError)
    assert futures[2].result().events[0].slot_id == "s2"
    assert row_count(journal, "events") == 2
    assert journal.verify() == []


def test_a_transaction_that_cannot_begin_fails_every_caller_once(
    journal: Journal, writer: GroupWriter, row_count: Count, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No transaction at all (locked, unreachable): every caller hears it, none is retried."""
    begins: list[int] = []

    def refuse_begin(conn: Any) -> None:
        begins.append(1)
        raise JournalError("journal write failed: database is locked")

    gate = Gate()
    first = writer.submit(gate)
    assert gate.entered.wait(10)
    event.listen(journal.engine, "begin", refuse_begin)
    futures = [writer.submit(receive(journal, f"s{i}", f"a{i}")) for i in range(5)]
    gate.open()
    first.result(10)
    for f in futures:
        assert "database is locked" in str(f.exception(10))
    event.remove(journal.engine, "begin", refuse_begin)
    assert len(begins) == 1
    assert row_count(journal, "events") == 0


def test_the_caller_hears_only_after_the_commit(journal: Journal, writer: GroupWriter) -> None:
    """When a future resolves, another connection already sees the row."""
    seen: list[int] = []
    checked = threading.Event()

    def check(_: Future[Any]) -> None:
        with journal.engine.connect() as other:
            seen.append(other.execute(text("SELECT count(*) FROM events")).scalar_one())
        checked.set()

    futures = held(writer, [receive(journal, f"s{i}", f"a{i}") for i in range(3)])
    futures[0].add_done_callback(check)  # already done: runs now
    assert seen == [3]
    f = writer.submit(receive(journal, "s9", "a9"))
    checked.clear()
    f.add_done_callback(check)  # runs on the writer thread as the result is set
    assert checked.wait(10)
    assert seen[-1] == 4


def test_close_finishes_queued_work_then_refuses(journal: Journal, row_count: Count) -> None:
    """Work queued before close commits; work submitted after it is refused."""
    w = GroupWriter(journal.engine)
    futures = [w.submit(receive(journal, f"s{i}", f"a{i}")) for i in range(10)]
    w.close()
    assert all(f.done() and f.exception() is None for f in futures)
    assert row_count(journal, "events") == 10
    with pytest.raises(RuntimeError, match="closed"):
        w.submit(receive(journal, "late", "a"))


def test_cancelled_work_is_skipped(journal: Journal, writer: GroupWriter, row_count: Count) -> None:
    """A future cancelled before its turn never runs."""
    gate = Gate()
    first = writer.submit(gate)
    assert gate.entered.wait(10)
    doomed = writer.submit(receive(journal, "s1", "a1"))
    kept = writer.submit(receive(journal, "s2", "a2"))
    assert doomed.cancel()
    gate.open()
    first.result(10)
    kept.result(10)
    assert row_count(journal, "events") == 1


def test_max_group_bounds_a_transaction(journal: Journal, row_count: Count) -> None:
    """No transaction carries more than ``max_group`` pieces of work."""
    w = GroupWriter(journal.engine, max_group=4)
    try:
        futures = held(w, [receive(journal, f"s{i}", f"a{i}") for i in range(10)])
        assert all(f.exception() is None for f in futures)
        assert w.groups == 1 + 3  # the gate, then 4 + 4 + 2
    finally:
        w.close()
    assert row_count(journal, "events") == 10


async def test_waiters_of_one_group_are_settled_in_one_post(
    journal: Journal, writer: GroupWriter
) -> None:
    """An event loop hears a whole group's outcomes in one wake-up, in commit order."""
    loop = asyncio.get_running_loop()
    posts: list[int] = []

    def post(callback: Callable[[Any], None], batch: Any) -> object:
        posts.append(len(batch))
        return loop.call_soon_threadsafe(callback, batch)

    gate = Gate()
    first = writer.submit(gate)
    assert await asyncio.to_thread(gate.entered.wait, 10)
    waiters: list[asyncio.Future[Applied]] = []
    for i in range(6):
        waiter: asyncio.Future[Applied] = loop.create_future()
        writer.submit_waiter(receive(journal, f"s{i}", f"a{i}"), waiter, post)
        waiters.append(waiter)
    bad: asyncio.Future[Applied] = loop.create_future()
    refused = TransitionRequest("nope", T.complete, Actor.agent)
    writer.submit_waiter(lambda conn: journal.apply_in(conn, [refused]), bad, post)
    gate.open()
    await asyncio.wrap_future(first)
    results = await asyncio.gather(*waiters)
    assert [r.events[0].slot_id for r in results] == [f"s{i}" for i in range(6)]
    with pytest.raises(Exception, match="nope"):
        await bad
    assert posts == [7]
