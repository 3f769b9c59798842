"""The docs stay true: every SQL query in docs/audit.md, on SQLite and PostgreSQL, returns
the rows it says against a journal written by a real scheduler run; every repository path
the docs name exists; docs/mcp.md's tools are the server's; docs/cli.md names every option.

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
import typer
from sqlalchemy import text
from sqlalchemy.engine import Connection

from calsched.cli import app
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


# -- every repository path the docs name exists ------------------------------------------

ROOT = DOCS.parent
PAGES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
#: A backticked repository path: a relative path with a directory part, ending in a file
#: name with an extension or in "/" (a directory). Placeholders ({…}, <…>, *, …) are not
#: paths, nor are absolute ones (/etc/…, ~/.config/…): those are on the user's machine.
_PATH = re.compile(r"`((?:[\w.-]+/)+(?:[\w-]+(?:\.[\w]+)+)?)`")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} +(.+?) *$", flags=re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, no punctuation, spaces as hyphens."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _has_anchor(path: Path, anchor: str) -> bool:
    """Whether a Markdown page has a heading whose anchor is ``anchor`` (other files: yes)."""
    if path.suffix != ".md":
        return True
    return anchor in {_slug(h) for h in _HEADING.findall(path.read_text())}


def _named_paths(page: Path) -> list[tuple[str, Path, str | None]]:
    """(as written, the file it names, the anchor) for each path and link of ``page``."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code shows commands
    found: list[tuple[str, Path, str | None]] = []
    for match in _PATH.finditer(text):
        found.append((match.group(1), ROOT / match.group(1), None))
    for match in _LINK.finditer(text):
        target = match.group(1)
        if re.match(r"[a-z][a-z+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        found.append((target, (page.parent / path) if path else page, anchor or None))
    return found


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_path_named_in_the_docs_exists(page: Path) -> None:
    """A repository path in backticks (from the repository root) or a link (from the page)
    names a file or directory of this repository, and a link's #anchor one of its headings."""
    missing = []
    for written, path, anchor in _named_paths(page):
        if not path.exists() or (anchor is not None and not _has_anchor(path, anchor)):
            missing.append(written)
    assert missing == [], f"{page.name} names what the repository does not hold"


def test_the_path_check_sees_paths_and_links(tmp_path: Path) -> None:
    """The pattern finds what a page names (so an empty result means something)."""
    page = DOCS / "operations.md"
    written = {w for w, _, _ in _named_paths(page)}
    assert "../deploy/calsched.service" in written
    assert any(w.startswith("audit.md") for w in written)
    fake = tmp_path / "page.md"
    fake.write_text("See `calsched/nowhere.py`, [x](gone.md) and `/etc/calsched/config.toml`.")
    assert [w for w, p, _ in _named_paths(fake) if not p.exists()] == [
        "calsched/nowhere.py",
        "gone.md",
    ]
    fake.write_text(
        "# Health, readiness and metrics\n[a](#health-readiness-and-metrics) [b](#nope)"
    )
    assert [a for _, p, a in _named_paths(fake) if a and not _has_anchor(p, a)] == ["nope"]


# -- the MCP tools the docs name are the ones the server lists ----------------------------


async def _listed_tools() -> dict[str, dict[str, object]]:
    """The tools :func:`calsched.mcp.build_server` lists, by name: their input schemas."""
    import httpx
    from mcp import Client

    from calsched.mcp import ControlClient, build_server

    unused = httpx.MockTransport(lambda request: httpx.Response(500))  # listing calls nobody
    control = ControlClient("http://127.0.0.1", "bob", "agent.x.y", transport=unused)
    async with Client(build_server(control)) as client:
        return {t.name: t.input_schema for t in (await client.list_tools()).tools}


async def test_mcp_doc_table_matches_the_server() -> None:
    """docs/mcp.md's tool table names every tool the server lists and each one's
    arguments (``name?`` for an optional one), no more and no fewer."""
    rows = re.findall(r"^\| `(calendar_\w+)` \|([^|]*)\|", (DOCS / "mcp.md").read_text(), re.M)
    documented = {
        name: {arg.strip("`") for arg in re.findall(r"`[\w?]+`", args)} for name, args in rows
    }
    listed = {}
    for name, schema in (await _listed_tools()).items():
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        assert isinstance(properties, dict)
        assert isinstance(required, list)
        listed[name] = {p if p in required else f"{p}?" for p in properties}
    assert documented == listed


async def test_every_calendar_tool_the_docs_name_exists() -> None:
    """A ``calendar_…`` name in backticks in any page is a listed tool or a table."""
    from calsched.journal.schema import metadata

    known = set(await _listed_tools()) | set(metadata.tables)
    for page in PAGES:
        named = set(re.findall(r"`(calendar_\w+)", page.read_text()))
        assert named <= known, (page.name, named - known)
    readme = set(re.findall(r"`(calendar_\w+)`", (ROOT / "README.md").read_text()))
    assert readme == set(await _listed_tools())


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
