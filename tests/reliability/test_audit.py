"""tests/reliability/audit.py: each check finds the breakage it names (it can fail)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from calsched.backend.receipts import Receipt
from calsched.journal import Journal, TransitionRequest
from calsched.model import Actor, SlotState, SlotView, Trigger
from tests.reliability.audit import Findings, audit, integrity, rows

ACKS = [("s1", 1, "complete"), ("s2", 1, "pause")]


@pytest.fixture
def journaled(
    sqlite_journal: Journal, sqlite_url: str, tmp_path: Path, drive: Callable[..., SlotView]
) -> tuple[Journal, Path, Path]:
    """s1 completed, s2 paused, s3 dispatching and then woken by recovery; the config."""
    drive(sqlite_journal, "s1", SlotState.completed, agent_id="a1")
    drive(sqlite_journal, "s2", SlotState.paused, agent_id="a2")
    drive(sqlite_journal, "s3", SlotState.dispatching, agent_id="a3")
    sqlite_journal.apply(TransitionRequest("s3", Trigger.woke, Actor.recovery, attempt=1))
    db = Path(sqlite_url.removeprefix("sqlite:///"))
    config = tmp_path / "daemon.toml"
    config.write_text(f'database_url = "{sqlite_url}"\nidentifier = "host-a"\n')
    return sqlite_journal, db, config


def _delivered(journal: Journal, db: Path) -> list[Receipt]:
    """Mark every outbox row delivered; one receipt per row, as a correct backend holds."""
    with journal.engine.begin() as conn:
        conn.execute(text("UPDATE outbox SET delivered_at = CURRENT_TIMESTAMP"))
    now = datetime.now(UTC)
    return [
        Receipt(key, slot, "host-a", SlotState(status), attempt, {}, now)
        for key, slot, status, attempt in rows(
            db, "SELECT idempotency_key, slot_id, status, attempt FROM outbox"
        )
    ]


def _audit(db: Path, config: Path, receipts: list[Receipt], **over: Any) -> Findings:
    kwargs: dict[str, Any] = {
        "acks": ACKS,
        "listed": ["s1", "s2", "s3"],
        "receipts": receipts,
        "posts": {r.idempotency_key: 1 for r in receipts},
        "wakes": {("s1", 1): 1, ("s3", 1): 2},
    }
    kwargs.update(over)
    return audit(db, config, **kwargs)


def test_a_sound_journal_passes(journaled: tuple[Journal, Path, Path]) -> None:
    journal, db, config = journaled
    found = _audit(db, config, _delivered(journal, db), posts={"k": 3})
    assert found.ok, found.problems()
    assert (found.acknowledged, found.listed, found.extra_wakes) == (5, 3, 1)
    assert found.redelivered_posts == 2
    assert integrity(db) == "ok"


def test_an_acknowledged_call_or_slot_missing_from_the_journal_is_lost(
    journaled: tuple[Journal, Path, Path],
) -> None:
    journal, db, config = journaled
    found = _audit(
        db, config, _delivered(journal, db), acks=[*ACKS, ("s2", 1, "resume")], listed=["s9"]
    )
    assert len(found.lost) == 2, found.lost


def test_an_event_without_its_outbox_row_or_projection_is_torn(
    journaled: tuple[Journal, Path, Path],
) -> None:
    journal, db, config = journaled
    receipts = _delivered(journal, db)
    with journal.engine.begin() as conn:
        conn.execute(text("DELETE FROM outbox WHERE slot_id = 's1' AND status = 'completed'"))
        conn.execute(text("UPDATE slots SET last_seq = last_seq - 1 WHERE slot_id = 's2'"))
    found = _audit(db, config, receipts)
    assert any("without its outbox row" in t for t in found.torn), found.torn
    assert any("without its projection" in t for t in found.torn), found.torn


def test_verify_drift_is_reported(journaled: tuple[Journal, Path, Path]) -> None:
    journal, db, config = journaled
    receipts = _delivered(journal, db)
    with journal.engine.begin() as conn:
        conn.execute(text("UPDATE slots SET state = 'aborted' WHERE slot_id = 's2'"))
    found = _audit(db, config, receipts)
    assert any("journal verify" in c for c in found.corrupt), found.corrupt


def test_undelivered_duplicated_and_doubly_terminal_deliveries_are_found(
    journaled: tuple[Journal, Path, Path],
) -> None:
    journal, db, config = journaled
    receipts = _delivered(journal, db)
    now = datetime.now(UTC)
    extra = Receipt("stray", "s1", "host-a", SlotState.aborted, 1, {}, now)
    found = _audit(db, config, [*receipts[1:], extra])
    assert found.undelivered == [
        f"{receipts[0].slot_id} {receipts[0].status.value} (key {receipts[0].idempotency_key})"
    ]
    assert found.duplicates == ["receipt stray for no outbox row"]
    assert found.double_terminal == ["('s1', 1) 2 terminal statuses"]


def test_a_second_wake_is_explained_only_by_recovery(
    journaled: tuple[Journal, Path, Path],
) -> None:
    journal, db, config = journaled
    found = _audit(db, config, _delivered(journal, db), wakes={("s1", 1): 2, ("s3", 1): 3})
    assert found.extra_wakes == 3
    assert found.unexplained_wakes == ["('s1', 1) woken 2x, never caught dispatching"]
