"""The docs stay true: every SQL query in docs/audit.md runs on a populated journal, and
docs/cli.md names every command's options."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from sqlalchemy import text

from calsched.cli import app
from calsched.journal import Journal
from calsched.journal.lease import Lease
from calsched.model import SlotState, SlotView

DOCS = Path(__file__).resolve().parent.parent / "docs"
QUERIES = re.findall(r"```sql\n(.*?)```", (DOCS / "audit.md").read_text(), flags=re.S)


def test_audit_doc_has_queries() -> None:
    """The audit page shows queries (the regex found them)."""
    assert len(QUERIES) >= 8


@pytest.mark.parametrize("query", QUERIES, ids=[q.split("\n")[0][:40] for q in QUERIES])
def test_audit_query_runs(query: str, journal: Journal, drive: Callable[..., SlotView]) -> None:
    """Each documented query runs on SQLite and PostgreSQL and returns rows."""
    drive(journal, "s-18", SlotState.completed, agent_id="bob")
    drive(journal, "s-19", SlotState.aborted, agent_id="alice")
    drive(journal, "s-20", SlotState.paused, agent_id="carol")
    lease = Lease(journal.engine, journal.identifier, ttl_s=60, lock=None)
    lease.acquire()
    with journal.engine.connect() as conn:
        rows = conn.execute(text(query)).all()
    # Queries about dead letters and repeated dispatches have nothing to show here.
    if "dead_at IS NOT NULL" not in query and "HAVING" not in query and "recovery" not in query:
        assert rows, query


def _options(command: object, path: tuple[str, ...]) -> list[tuple[str, str]]:
    found = [
        (" ".join(path), name)
        for param in getattr(command, "params", [])
        for name in param.opts
        if name.startswith("--")
    ]
    for name, sub in getattr(command, "commands", {}).items():
        found += _options(sub, (*path, name))
    return found


def test_cli_doc_names_every_option() -> None:
    """Every long option of every command appears in docs/cli.md (a flag's ``--no-``
    form, if it has one, need not)."""
    doc = (DOCS / "cli.md").read_text()
    options = _options(typer.main.get_command(app), ("calsched",))
    assert len(options) > 50
    missing = [
        f"{path} {name}"
        for path, name in options
        if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", doc)
    ]
    assert missing == []
