"""Journal reports: ``history``, ``events``, ``journal verify|rebuild``, ``db upgrade|current``.

They read (or migrate) the journal database directly; no daemon needs to run.
"""

from __future__ import annotations

import csv
import sys
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from calsched.commands.common import (
    JsonOption,
    config_of,
    console,
    fail,
    holding_lease,
    iso,
    new_table,
    open_journal,
    parse_when,
    print_json,
    short_time,
    sqlite_path,
)
from calsched.model import Event, SlotState, SlotView, format_time

if TYPE_CHECKING:
    from calsched.journal import Journal

__all__ = [
    "HistoryFormat",
    "db_current",
    "db_upgrade",
    "events",
    "history",
    "journal_rebuild",
    "journal_verify",
]


class HistoryFormat(StrEnum):
    """Output formats of ``calsched history``."""

    table = "table"
    json = "json"
    csv = "csv"


_HISTORY_FIELDS = (
    "slot_id",
    "agent_id",
    "state",
    "attempt",
    "title",
    "received_at",
    "started_at",
    "resolved_at",
    "updated_at",
    "summary",
    "reason",
)


def _history_row(view: SlotView) -> dict[str, Any]:
    return {
        "slot_id": view.slot_id,
        "agent_id": view.agent_id,
        "state": view.state.value,
        "attempt": view.attempt,
        "title": view.slot.title,
        "received_at": iso(view.received_at),
        "started_at": iso(view.started_at),
        "resolved_at": iso(view.resolved_at),
        "updated_at": iso(view.updated_at),
        "summary": view.summary,
        "reason": view.reason,
    }


def history(
    ctx: typer.Context,
    agent: Annotated[str | None, typer.Option("--agent", "-a", help="Only this agent.")] = None,
    state: Annotated[SlotState | None, typer.Option(help="Only slots in this state.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Changed at or after: RFC 3339, or -2h/-7d relative to now."),
    ] = None,
    until: Annotated[str | None, typer.Option(help="Changed before: RFC 3339 or -1h.")] = None,
    limit: Annotated[
        int, typer.Option(min=0, help="At most this many slots, newest first (0: all).")
    ] = 50,
    output: Annotated[
        HistoryFormat, typer.Option("--format", "-f", help="table, json or csv.")
    ] = HistoryFormat.table,
) -> None:
    """Slots from the journal database, newest change first (reads SQL; no daemon needed).

    Example: calsched history --agent bob --since -1d --format csv
    """
    since_at = parse_when(since, option="--since") if since else None
    until_at = parse_when(until, option="--until") if until else None
    cfg = config_of(ctx)
    with open_journal(cfg) as journal:
        views = journal.history(
            agent_id=agent, state=state, since=since_at, until=until_at, limit=limit or None
        )
        hint = "" if views else _others_hint(journal)
    rows = [_history_row(v) for v in views]
    if output is HistoryFormat.json:
        print_json(rows)
    elif output is HistoryFormat.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=_HISTORY_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        table = new_table(
            "slot", "agent", "state", "attempt", "title", "changed", "summary / reason"
        )
        for row in rows:
            table.add_row(
                row["slot_id"],
                row["agent_id"],
                row["state"],
                str(row["attempt"]),
                row["title"] or "",
                short_time(row["updated_at"]),
                row["summary"] or row["reason"] or "",
            )
        console().print(table)
        if not rows:
            typer.echo("no slots match" + hint, err=True)


def _event_row(event: Event) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "event_id": event.event_id,
        "recorded_at": format_time(event.recorded_at),
        "slot_id": event.slot_id,
        "attempt": event.attempt,
        "agent_id": event.agent_id,
        "kind": event.kind.value,
        "actor": event.actor.value,
        "state_from": event.state_from.value if event.state_from else None,
        "state_to": event.state_to.value,
        "summary": event.summary,
        "reason": event.reason,
    }


def events(
    ctx: typer.Context,
    slot: Annotated[str | None, typer.Option("--slot", "-s", help="Only this slot.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="At most this many events (0: all).")] = 0,
    as_json: JsonOption = False,
) -> None:
    """The journal's events in order: one slot's, or every slot's.

    Example: calsched events --slot s-18
    """
    cfg = config_of(ctx)
    with open_journal(cfg) as journal:
        found = journal.events(slot, limit=limit or None)
        hint = "" if found else _others_hint(journal)
    rows = [_event_row(e) for e in found]
    if as_json:
        print_json(rows)
        return
    table = new_table(
        "seq", "recorded", "slot", "att", "agent", "trigger", "actor", "from→to", "note"
    )
    for row in rows:
        table.add_row(
            str(row["seq"]),
            short_time(row["recorded_at"]),
            row["slot_id"],
            str(row["attempt"]),
            row["agent_id"],
            row["kind"],
            row["actor"],
            f"{row['state_from'] or 'new'} → {row['state_to']}",
            row["summary"] or row["reason"] or "",
        )
    console().print(table)
    if not rows:
        typer.echo("no events" + (f" for slot {slot!r}" if slot else "") + hint, err=True)


def journal_verify(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Prove the slots projection equals the fold of the events; exit 1 listing mismatches.

    Example: calsched journal verify
    """
    cfg = config_of(ctx)
    from calsched.journal.identifiers import journal_size

    with open_journal(cfg) as journal:
        mismatches = journal.verify()
        slot_count, event_count = journal_size(journal.engine, cfg.identifier)
        hint = "" if slot_count else _others_hint(journal)
    checked = f"checked {slot_count} slot(s) and {event_count} event(s) of {cfg.identifier!r}"
    if as_json:
        print_json(
            {
                "ok": not mismatches,
                "slots": slot_count,
                "events": event_count,
                "mismatches": [
                    {
                        "identifier": m.identifier,
                        "slot_id": m.slot_id,
                        "field": m.field,
                        "stored": _jsonable(m.stored),
                        "folded": _jsonable(m.folded),
                    }
                    for m in mismatches
                ],
            }
        )
    elif mismatches:
        for mismatch in mismatches:
            typer.echo(f"mismatch: {mismatch}")
    else:
        typer.echo(f"ok: the slots projection matches the events ({checked}){hint}")
    if mismatches:
        fail(
            f"{len(mismatches)} mismatch(es) between the projection and the events; "
            "`calsched journal rebuild` recomputes the projection"
        )


def _others_hint(journal: Journal) -> str:
    """What a report that found nothing adds: the database's other identifiers, if any."""
    from calsched.journal.identifiers import others_hint

    return others_hint(journal.engine, journal.identifier)


def _jsonable(value: object) -> Any:
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    to_wire = getattr(value, "to_wire", None)
    if callable(to_wire):
        return to_wire()
    return str(value)


def journal_rebuild(ctx: typer.Context) -> None:
    """Recompute the slots projection from the events (refused while a daemon runs).

    Example: calsched journal rebuild
    """
    cfg = config_of(ctx)
    with open_journal(cfg) as journal, holding_lease(cfg, journal):
        count = journal.rebuild()
    typer.echo(f"rebuilt the projection of {count} slot(s) from the events")


def db_upgrade(ctx: typer.Context) -> None:
    """Create the schema, or migrate it to this calsched's revision (refused while a
    daemon of any identifier runs on the database, unless there is nothing to do).

    Example: calsched db upgrade
    """
    from calsched.journal import migrate
    from calsched.journal.engine import make_engine
    from calsched.journal.lease import live_holders

    cfg = config_of(ctx)
    path = sqlite_path(cfg.database_url)
    if path is None or path.exists():
        engine = make_engine(cfg.database_url, synchronous=cfg.sqlite_synchronous)
        try:
            if not migrate.is_at_head(engine):
                alive = live_holders(engine)
                if alive:
                    raise alive[0].held_error().with_hint("stop the daemon first")
        finally:
            engine.dispose()
    with open_journal(cfg, upgrade=True) as journal:
        current = migrate.current_revision(journal.engine)
    typer.echo(f"database {cfg.database_display()} is at revision {current} (head)")


def db_current(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show the database in use, its schema revision and this calsched's (head).

    Example: calsched db current --json
    """
    from calsched.journal import migrate
    from calsched.journal.engine import make_engine

    cfg = config_of(ctx)
    path = sqlite_path(cfg.database_url)
    engine = None
    current: str | None = None
    if path is None or path.exists():
        engine = make_engine(cfg.database_url, synchronous=cfg.sqlite_synchronous)
        try:
            current = migrate.current_revision(engine)
        finally:
            engine.dispose()
    head = migrate.head_revision()
    database = cfg.database_display()
    if as_json:
        print_json(
            {"database": database, "current": current, "head": head, "up_to_date": current == head}
        )
        return
    typer.echo(f"database: {database}")
    typer.echo(f"current: {current or '(none)'}")
    typer.echo(f"head:    {head}")
    if current != head:
        typer.echo("run `calsched db upgrade` to migrate", err=True)
