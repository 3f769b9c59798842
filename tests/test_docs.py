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
