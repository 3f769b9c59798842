"""The docs stay true: every SQL query in docs/audit.md, on SQLite and PostgreSQL, returns
the rows it says against a journal written by a real scheduler run.

The journal is tests/audit_scenario.py's (a fake clock, so every time is known). Each
question's heading ends with its row count, ``(N rows)``; :data:`EXPECTED` holds the
same counts, so neither the doc nor the scenario can drift alone. A few answers are
checked value by value too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection

from calsched.journal.engine import make_engine
from calsched.journal.history import state_at
from calsched.journal.lease import Lease
from tests.audit_scenario import T0, build_audit_journal
from tests.conftest import PG_ENV, PG_SKIP_REASON, pg_schema

DOCS = Path(__file__).resolve().parent.parent / "docs"
AUDIT = (DOCS / "audit.md").read_text()
#: (question number, the count its heading states, the query), in the doc's order.
QUESTIONS = [
    (int(number), int(count), query)
    for number, count, query in re.findall(
        r"^## (\d+)\. [^\n]*\((\d+) rows?\)\n.*?```sql\n(.*?)```", AUDIT, flags=re.S | re.M
    )
]

#: Rows each question returns on the scenario's journal.
EXPECTED = {
    1: 6,  # s-01: receive, dispatch, woke, pause, resume, complete
    2: 2,  # at 22:10: s-01 in progress (resumed at 22:06), s-04 pending behind it
    3: 1,  # s-08, paused
    4: 7,  # alice completed/aborted, bob completed, carol/dave aborted, erin/frank completed
    5: 3,  # missed, wrong agent, cancelled in the calendar
    6: 4,  # alice, bob, erin, frank
    7: 6,  # every agent
    8: 1,  # s-04 waited 930 s behind s-01
    9: 1,  # s-05
    10: 1,  # s-03
    11: 1,  # the abort of s-04
    12: 1,  # the wake of s-07 after the restart
    13: 1,  # s-02: attempts 1 and 2
    14: 1,  # s-02's completion: three tries
    15: 1,  # s-06's in_progress, rejected with a 422
    16: 1,  # s-08's pause, waiting for its retry
    17: 4,  # in_progress, paused, completed, aborted
    18: 1,  # host-a's lease
}


def test_every_sql_block_is_a_numbered_question() -> None:
    """The regex found every ```sql block, each under a heading with its count."""
    assert len(QUESTIONS) == AUDIT.count("```sql")
    assert [n for n, _, _ in QUESTIONS] == list(range(1, len(QUESTIONS) + 1))
    assert len(QUESTIONS) >= 12


def test_the_doc_states_the_counts_the_test_expects() -> None:
    """Each heading's ``(N rows)`` is what the test checks (and no question is unchecked)."""
    assert {n: count for n, count, _ in QUESTIONS} == EXPECTED


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def audited(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Connection]:
    """The scenario's journal, with host-a's lease taken, on a SQLite file or a private
    PostgreSQL schema: written once per database for the whole module (it only reads)."""
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('audit') / 'journal.db'}"
        else:
            admin = os.environ.get(PG_ENV)
            if not admin:
                pytest.skip(PG_SKIP_REASON)
            url = stack.enter_context(pg_schema(admin))
        build_audit_journal(url)
        engine = make_engine(url)
        stack.callback(engine.dispose)
        Lease(engine, "host-a", ttl_s=60, lock=None).acquire()
        yield stack.enter_context(engine.connect())


def _rows(conn: Connection, number: int) -> list[dict[str, Any]]:
    query = next(q for n, _, q in QUESTIONS if n == number)
    return [dict(r) for r in conn.execute(text(query)).mappings()]


def test_every_query_returns_its_rows(audited: Connection) -> None:
    """Every documented query runs and returns the rows its heading states."""
    counts = {n: len(audited.execute(text(query)).all()) for n, _, query in QUESTIONS}
    assert counts == EXPECTED


def test_the_answers_hold_the_scenario(audited: Connection) -> None:
    """Times, durations, medians and fates as the scenario made them, on either database."""
    timeline = _rows(audited, 1)
    assert [r["kind"] for r in timeline] == [
        "receive",
        "dispatch",
        "woke",
        "pause",
        "resume",
        "complete",
    ]
    assert timeline[-1]["recorded_at"] == "2026-11-27T22:16:00.000Z"
    assert [r["in_state_from_s"] for r in timeline] == [None, 0, 0, 60, 300, 600]
    active_at = _rows(audited, 2)
    assert [(r["slot_id"], r["state"], r["since"]) for r in active_at] == [
        ("s-04", "pending", "2026-11-27T22:00:30.000Z"),
        ("s-01", "in_progress", "2026-11-27T22:06:00.000Z"),
    ]
    median = {r["agent_id"]: r["median_s"] for r in _rows(audited, 6)}
    assert median == {"alice": 960, "bob": 160, "erin": 100, "frank": 200}
    worked = {r["agent_id"]: (r["in_progress_s"], r["paused_s"]) for r in _rows(audited, 7)}
    assert worked["alice"] == (660 + 40, 300)
    assert worked["bob"] == (120 + 200, 0)
    assert [(r["slot_id"], r["retries"]) for r in _rows(audited, 14)] == [("s-02", 2)]
    assert [r["status"] for r in _rows(audited, 15)] == ["in_progress"]


def _iso_ms(at: datetime) -> str:
    """A time as the views write it: milliseconds (cut), ``Z``."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def test_sql_state_at_equals_the_fold(audited: Connection) -> None:
    """Question 2's SQL and ``calsched state --at``'s fold agree at that moment."""
    moment = T0.replace(minute=10)
    folded = state_at(audited.engine, "host-a", moment)
    by_sql = sorted((r["slot_id"], r["state"], r["attempt"], r["since"]) for r in _rows(audited, 2))
    assert by_sql == sorted(
        (v.slot_id, v.state.value, v.attempt, _iso_ms(v.updated_at)) for v in folded
    )
