"""What every ``calsched`` command shares: the configuration, the journal, the output.

The root command leaves a :class:`CliState` in the click context; :func:`config_of` builds
the :class:`~calsched.config.Config` from it plus the command's own flags. Output helpers
make a rich console per call (test runners and pipes swap ``sys.stdout``), print JSON,
and end a command with one ``error:`` line (:func:`fail`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from calsched.config import Config, load_config
from calsched.errors import InvalidInputError, JournalError
from calsched.model import format_time

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from calsched.journal import Journal

__all__ = [
    "EXIT_ERROR",
    "EXIT_USAGE",
    "AgentOption",
    "CliState",
    "JsonOption",
    "config_of",
    "console",
    "fail",
    "holding_lease",
    "iso",
    "new_table",
    "open_journal",
    "parse_when",
    "print_json",
    "schema_revision",
    "short_time",
    "sqlite_path",
]

#: A :class:`~calsched.errors.CalschedError`: bad config, unreachable database, ...
EXIT_ERROR = 1
#: A usage mistake caught by the parser (click's convention).
EXIT_USAGE = 2

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
AgentOption = Annotated[str, typer.Option("--agent", "-a", metavar="ID", help="The agent's id.")]


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """End the command: ``error: <message>`` on stderr, exit ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


# -- the configuration, built once per invocation ---------------------------------------


@dataclass
class CliState:
    """What the root options leave for the commands: the config file and flag overrides."""

    config_path: Path | None
    flags: dict[str, Any] = field(default_factory=dict)

    def config(self, **more: Any) -> Config:
        """Load the configuration with the root flags and a command's own."""
        return load_config(self.config_path, _merge(self.flags, more))


def _merge(base: Mapping[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in more.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_of(ctx: typer.Context, **more: Any) -> Config:
    """The configuration for this invocation; ``more`` are the command's own flags."""
    state = ctx.find_root().obj
    if not isinstance(state, CliState):  # a command invoked without the root callback
        state = CliState(config_path=None)
    return state.config(**more)


# -- times -------------------------------------------------------------------------------

_RELATIVE = re.compile(r"^([+-])(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(text: str, *, option: str, now: datetime | None = None) -> datetime:
    """A time from ``now``, ``+30s``/``-2h`` (units s, m, h, d) or RFC 3339 (UTC if naive).

    Raises :class:`~calsched.errors.InvalidInputError` naming ``option``.
    """
    now = now or datetime.now(UTC)
    value = text.strip()
    if value.lower() == "now":
        return now
    match = _RELATIVE.match(value)
    if match:
        sign, amount, unit = match.groups()
        delta = timedelta(seconds=float(amount) * _UNITS[unit])
        return now + delta if sign == "+" else now - delta
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(
            option, f"{text!r} is not 'now', +N/-N with s/m/h/d, or an RFC 3339 time"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    """RFC 3339 UTC, or ``None``."""
    return format_time(value) if value is not None else None


def short_time(value: str | None) -> str:
    """An RFC 3339 time to the second, for tables (JSON and CSV keep the full value)."""
    if not value:
        return ""
    head, dot, _ = value.partition(".")
    return f"{head}Z" if dot else value


# -- output ------------------------------------------------------------------------------


def console() -> Console:
    """A rich console on the current stdout.

    Made per call: CliRunner (and pipes) swap ``sys.stdout`` after import. Into a pipe or a
    file, tables get room instead of rich's 80-column default, so ids are not cut off.
    """
    # Imported here: `calsched run` never prints a table, and rich is a slow import.
    from rich.console import Console

    out = Console(highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(highlight=False, width=200)
    return out


def new_table(*columns: str, title: str | None = None) -> Table:
    """A rich table with these column headers (rich is imported on first use), in the
    listings' borderless style (:mod:`calsched.commands.listing` lays out for width)."""
    from rich.table import Table

    return Table(
        *columns, title=title, box=None, pad_edge=False, padding=(0, 1), header_style="bold"
    )


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


# -- the journal -------------------------------------------------------------------------


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL; ``None`` for other databases and in-memory SQLite."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def schema_revision(cfg: Config) -> str | None:
    """The schema revision of the configured database, read without creating it;
    ``None`` when it has none yet (no SQLite file, or no schema in it)."""
    from calsched.journal import migrate
    from calsched.journal.engine import make_engine

    path = sqlite_path(cfg.database_url)
    if path is not None and not path.exists():
        return None
    engine = make_engine(cfg.database_url, synchronous=cfg.sqlite_synchronous)
    try:
        return migrate.current_revision(engine)
    finally:
        engine.dispose()


@contextmanager
def holding_lease(cfg: Config, journal: Journal) -> Iterator[None]:
    """For an offline command that writes the journal: hold the identifier's lease
    meanwhile (its writes fenced by it), released after.

    Raises :class:`~calsched.errors.LeaseHeldError` while a live daemon holds it.
    """
    from calsched.errors import LeaseHeldError
    from calsched.journal.lease import Lease

    lease = Lease.guarded(journal.engine, cfg.identifier, ttl_s=cfg.lease_ttl_s)
    try:
        lease.acquire()
    except LeaseHeldError as exc:
        raise exc.with_hint("stop the daemon first") from None
    journal.fence(lease.fence)
    try:
        yield
    finally:
        journal.fence(None)
        lease.release()


@contextmanager
def open_journal(cfg: Config, *, upgrade: bool = False) -> Iterator[Journal]:
    """Open the journal, closed on exit.

    Without ``upgrade`` (the readers), a missing SQLite file is an error rather than an
    empty file created as a side effect, and the schema must already be at head.
    """
    # Imported here: the journal (SQLAlchemy, Alembic) is most of the CLI's start-up time,
    # and the agents' tool commands never need it.
    from calsched.journal import Journal

    path = sqlite_path(cfg.database_url)
    if not upgrade and path is not None and not path.exists():
        raise JournalError(
            f"no database at {path}; `calsched db upgrade` or `calsched run` creates it"
        )
    journal = Journal.open(
        cfg.database_url, cfg.identifier, synchronous=cfg.sqlite_synchronous, upgrade=upgrade
    )
    try:
        yield journal
    finally:
        journal.close()
