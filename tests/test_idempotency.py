"""The idempotency store: answers kept in the write transaction, per agent, for a day."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from calsched.errors import JournalError
from calsched.journal import Journal
from calsched.journal.engine import writing
from calsched.journal.idempotency import IdempotencyStore, ToolKey
from calsched.journal.schema import idempotency_keys
from tests.conftest import FakeClock

BODY = {"slot": {"id": "s-1"}, "state": "completed"}


def store_of(journal: Journal, clock: FakeClock, identifier: str = "host-a") -> IdempotencyStore:
    return IdempotencyStore(journal.engine, identifier, clock=clock)


def rows(journal: Journal) -> int:
    with journal.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(idempotency_keys)).scalar_one())


def test_fingerprint_depends_on_route_actor_and_body() -> None:
    """Same call, same fingerprint; any difference changes it."""
    base = ToolKey.of("k", "complete", "agent", {"summary": "a", "slot_id": None})
    assert base == ToolKey.of("k", "complete", "agent", {"slot_id": None, "summary": "a"})
    others = [
        ToolKey.of("k", "abort", "agent", {"summary": "a", "slot_id": None}),
        ToolKey.of("k", "complete", "operator", {"summary": "a", "slot_id": None}),
        ToolKey.of("k", "complete", "agent", {"summary": "b", "slot_id": None}),
    ]
    assert all(o.fingerprint != base.fingerprint for o in others)


def test_remembered_answer_is_recalled(journal: Journal, clock: FakeClock) -> None:
    """What remember_in wrote, recall gives back, for that agent and key only."""
    store = store_of(journal, clock)
    key = ToolKey.of("k-1", "complete", "agent", {})
    with writing(journal.engine, "journal") as conn:
        store.remember_in(conn, "alice", key, 200, BODY)
    kept = store.recall("alice", "k-1")
    assert kept is not None
    assert (kept.fingerprint, kept.status, kept.body) == (key.fingerprint, 200, BODY)
    assert store.recall("bob", "k-1") is None
    assert store.recall("alice", "k-2") is None
    assert store_of(journal, clock, "host-b").recall("alice", "k-1") is None


def test_rolled_back_transaction_keeps_no_answer(journal: Journal, clock: FakeClock) -> None:
    """The answer commits with its transaction or not at all."""
    store = store_of(journal, clock)

    def fail_after_the_insert() -> None:
        with writing(journal.engine, "journal") as conn:
            store.remember_in(conn, "alice", ToolKey.of("k", "pause", "agent", {}), 200, BODY)
            raise RuntimeError("the transition failed after the insert")

    with pytest.raises(RuntimeError):
        fail_after_the_insert()
    assert store.recall("alice", "k") is None
    assert rows(journal) == 0


def test_a_second_answer_for_a_live_key_fails(journal: Journal, clock: FakeClock) -> None:
    """The primary key refuses a second row: a change is never made twice."""
    store = store_of(journal, clock)
    key = ToolKey.of("k", "pause", "agent", {})
    with writing(journal.engine, "journal") as conn:
        store.remember_in(conn, "alice", key, 200, BODY)

    def again() -> None:
        with writing(journal.engine, "journal") as conn:
            store.remember_in(conn, "alice", key, 200, {"other": True})

    with pytest.raises(JournalError):
        again()
    kept = store.recall("alice", "k")
    assert kept is not None
    assert kept.body == BODY


def test_keys_expire_after_the_ttl(journal: Journal, clock: FakeClock) -> None:
    """After a day a key answers nothing, and the next write deletes its row."""
    store = store_of(journal, clock)
    key = ToolKey.of("old", "pause", "agent", {})
    with writing(journal.engine, "journal") as conn:
        store.remember_in(conn, "alice", key, 200, BODY)
    clock.advance((store.ttl - timedelta(seconds=1)).total_seconds())
    assert store.recall("alice", "old") is not None
    clock.advance(1)
    assert store.recall("alice", "old") is None
    with writing(journal.engine, "journal") as conn:
        store.remember_in(conn, "alice", key, 200, {"again": True})
    assert rows(journal) == 1
    kept = store.recall("alice", "old")
    assert kept is not None
    assert kept.body == {"again": True}
