"""Journal reports: ``history``, ``events``, ``journal verify|rebuild``, ``db upgrade|current``.

They read (or migrate) the journal database directly; no daemon needs to run.
"""

from __future__ import annotations

from contextlib import closing
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from calsched.commands.common import (
    JsonOption,
    config_of,
    fail,
    holding_lease,
    iso,
    open_journal,
    parse_when,
    print_json,
    schema_revision,
    sqlite_path,
)
from calsched.commands.listing import (
    DEFAULT_LIMIT,
    AllOption,
    Cell,
    Format,
    JsonLinesOption,
    LimitOption,
    bound,
    emit,
    field_cell,
    note_cell,
    note_shown,
    output_form,
    time_cell,
)
from calsched.commands.progress import progress_bar
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


#: ``history --format``: the forms every listing has (an alias kept for importers).
HistoryFormat = Format

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

_HISTORY_CELLS = (
    field_cell("slot", "slot_id"),
    field_cell("agent", "agent_id"),
    field_cell("state", "state", kind="word"),
    field_cell("attempt", "attempt", kind="word", show="wide"),
    field_cell("title", "title", show="wide"),
    time_cell("changed", "updated_at"),
    note_cell(),
)

SinceOption = Annotated[
    str | None,
    typer.Option(metavar="TIME", help="At or after: RFC 3339, or -2h/-7d relative to now."),
]
UntilOption = Annotated[
    str | None, typer.Option(metavar="TIME", help="Before: RFC 3339, or -1h relative to now.")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON array (streamed).")]


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
    agent: Annotated[
        str | None, typer.Option("--agent", "-a", metavar="ID", help="Only this agent.")
    ] = None,
    state: Annotated[SlotState | None, typer.Option(help="Only slots in this state.")] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: LimitOption = DEFAULT_LIMIT,
    everything: AllOption = False,
    output: Annotated[
        Format, typer.Option("--format", "-f", help="table, json, jsonl or csv.")
    ] = Format.table,
    as_json: JsonFlag = False,
    as_jsonl: JsonLinesOption = False,
) -> None:
    """Slots from the journal database, newest change first (reads SQL; no daemon needed).

    Shows the newest 50 unless told otherwise (--limit N, --all); says so when it
    leaves slots out. Times filter on the slot's last change.

    Example: calsched history --agent bob --since -1d --jsonl
    """
    form = output_form(as_json, as_jsonl, output)
    since_at = parse_when(since, option="--since") if since else None
    until_at = parse_when(until, option="--until") if until else None
    wanted = bound(limit, everything)
    where: dict[str, Any] = {
        "agent_id": agent,
        "state": state,
        "since": since_at,
        "until": until_at,
    }
    cfg = config_of(ctx)
    with open_journal(cfg) as journal:
        with closing(journal.stream_history(**where, limit=wanted)) as views:
            rows = (_history_row(v) for v in views)
            shown = emit(rows, form, _HISTORY_CELLS, fields=_HISTORY_FIELDS)
        if wanted is not None and shown == wanted:
            note_shown(shown, journal.count_history(**where), "slots", which="the newest ")
        hint = "" if shown else _others_hint(journal)
    if not shown:
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


_EVENT_CELLS = (
    field_cell("seq", "seq", kind="word"),
    time_cell("recorded", "recorded_at"),
    field_cell("slot", "slot_id"),
    field_cell("att", "attempt", kind="word", show="wide"),
    field_cell("agent", "agent_id"),
    field_cell("trigger", "kind", kind="word"),
    field_cell("actor", "actor", kind="word", show="wide"),
    Cell(
        "from→to",
        lambda row: f"{row['state_from'] or 'new'} → {row['state_to']}",
        kind="word",
        show="wide",
    ),
    field_cell("state", "state_to", kind="word", show="narrow"),
    note_cell("note"),
)


def events(
    ctx: typer.Context,
    slot: Annotated[
        str | None, typer.Option("--slot", "-s", metavar="ID", help="Only this slot.")
    ] = None,
    agent: Annotated[
        str | None, typer.Option("--agent", "-a", metavar="ID", help="Only this agent.")
    ] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: LimitOption = DEFAULT_LIMIT,
    everything: AllOption = False,
    as_json: JsonFlag = False,
    as_jsonl: JsonLinesOption = False,
) -> None:
    """The journal's events in order: one slot's, one agent's, or every slot's.

    Shows the last 50 (oldest first) unless told otherwise (--limit N, --all); says so
    when it leaves events out. Times filter on when the event was recorded.

    Example: calsched events --agent bob --since -1h
    """
    form = output_form(as_json, as_jsonl)
    where: dict[str, Any] = {
        "agent_id": agent,
        "since": parse_when(since, option="--since") if since else None,
        "until": parse_when(until, option="--until") if until else None,
    }
    wanted = bound(limit, everything)
    cfg = config_of(ctx)
    with open_journal(cfg) as journal:
        with closing(journal.stream_events(slot, **where, last=wanted)) as found:
            shown = emit((_event_row(e) for e in found), form, _EVENT_CELLS)
        if wanted is not None and shown == wanted:
            note_shown(shown, journal.count_events(slot, **where), "events", which="the last ")
        hint = "" if shown else _others_hint(journal)
    if not shown:
        typer.echo("no events" + (f" for slot {slot!r}" if slot else "") + hint, err=True)


AnchorOption = Annotated[
    str | None,
    typer.Option(
        metavar="HASH",
        help="A head hash kept from an earlier verify: the chain must still contain it.",
    ),
]


def journal_verify(
    ctx: typer.Context, as_json: JsonOption = False, anchor: AnchorOption = None
) -> None:
    """Prove the slots projection equals the fold of the events, and that the events'
    hash chain holds; exit 1 listing mismatches or naming the first broken event.

    Example: calsched journal verify --anchor 7a45ab1f...
    """
    cfg = config_of(ctx)
    from calsched.journal.identifiers import journal_size

    if anchor is not None and not _is_hash(anchor):
        fail("--anchor: a chain hash is 64 hexadecimal digits (`journal verify` prints one)")
    with (
        open_journal(cfg) as journal,
        progress_bar(
            "verifying events", lambda: 2 * journal.count_events(), quiet=as_json
        ) as advance,
    ):
        mismatches = journal.verify(advance)
        chain = journal.verify_chain(anchor=anchor.lower() if anchor else None, progress=advance)
        slot_count, event_count = journal_size(journal.engine, cfg.identifier)
        hint = "" if slot_count else _others_hint(journal)
    broken = chain.broken
    checked = f"checked {slot_count} slot(s) and {event_count} event(s) of {cfg.identifier!r}"
    if as_json:
        print_json(
            {
                "ok": not mismatches and broken is None,
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
                "chain": {
                    "ok": broken is None,
                    "head": chain.head,
                    "checkpoints": chain.checkpoints,
                    "break": None
                    if broken is None
                    else {
                        "seq": broken.seq,
                        "event_id": broken.event_id,
                        "slot_id": broken.slot_id,
                        "what": broken.what,
                    },
                },
            }
        )
    else:
        for mismatch in mismatches[:DEFAULT_LIMIT]:
            typer.echo(f"mismatch: {mismatch}")
        if mismatches:
            note_shown(
                min(len(mismatches), DEFAULT_LIMIT),
                len(mismatches),
                "mismatches",
                which="the first ",
                hint="`--json` lists them all",
            )
        if broken is not None:
            typer.echo(f"chain broken: {broken}")
        if not mismatches and broken is None:
            typer.echo(
                f"ok: the slots projection matches the events ({checked}); "
                f"the hash chain holds, head {chain.head}{hint}"
            )
    if broken is not None:
        # The events themselves were changed: a rebuild would fold the changed ones.
        where = f"at event seq {broken.seq}" if broken.seq is not None else "at its head"
        also = f" (and {len(mismatches)} projection mismatch(es))" if mismatches else ""
        fail(
            f"the hash chain of {cfg.identifier!r} breaks {where}{also}: the events were "
            "changed outside calsched (compare with an export or a backup)"
        )
    if mismatches:
        fail(
            f"{len(mismatches)} mismatch(es) between the projection and the events; "
            "`calsched journal rebuild` recomputes the projection"
        )


def _is_hash(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


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
    with (
        open_journal(cfg) as journal,
        holding_lease(cfg, journal),
        progress_bar("rebuilding from events", journal.count_events) as advance,
    ):
        count = journal.rebuild(advance)
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

    cfg = config_of(ctx)
    current = schema_revision(cfg)
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
