"""The embedded local calendar: ``slots add|list`` and ``backend serve``.

The calendar lives in the journal's database (tables ``calendar_slots`` and
``calendar_receipts``); ``calsched run`` without a ``backend_url`` fires its slots.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from calsched.commands.common import (
    AgentOption,
    JsonOption,
    config_of,
    fail,
    iso,
    open_journal,
    parse_when,
    print_json,
    short_time,
)
from calsched.commands.listing import (
    DEFAULT_LIMIT,
    AllOption,
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

if TYPE_CHECKING:
    from calsched.config import Config
    from calsched.journal import Journal
    from calsched.journal.lease import Holder

__all__ = ["backend_serve", "slots_add", "slots_list"]


def slots_add(
    ctx: typer.Context,
    agent: AgentOption,
    slot_id: Annotated[
        str | None,
        typer.Option("--id", metavar="ID", help="Slot id (default: a new random one)."),
    ] = None,
    title: Annotated[str | None, typer.Option(help="A short title.")] = None,
    prompt: Annotated[str | None, typer.Option(help="What the agent is told.")] = None,
    at: Annotated[
        str, typer.Option(metavar="WHEN", help="When it fires: now, +30s, +5m, or RFC 3339.")
    ] = "now",
    override_message: Annotated[
        str | None, typer.Option(help="Sent instead of the prompt when the agent is woken.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Schedule a slot in the embedded local calendar (same database as the journal).

    Example: calsched slots add --agent bob --title "Daily report" --prompt "Write it" --at +5m
    """
    from calsched.backend.calendar import LocalCalendar

    fire_at = parse_when(at, option="--at")
    new_id = slot_id or f"s-{uuid.uuid4().hex[:12]}"
    cfg = config_of(ctx)
    with open_journal(cfg, upgrade=True) as journal:
        added = LocalCalendar(journal.engine).add(
            new_id,
            agent,
            fire_at=fire_at,
            title=title,
            prompt_text=prompt,
            override_message=override_message,
        )
        holder = _daemon_of(cfg, journal)
    row = added.to_wire()
    if cfg.backend_url is not None:
        typer.echo(
            "note: backend_url is set, so `calsched run` asks that backend, "
            "not this embedded calendar",
            err=True,
        )
    when = _when_it_fires(cfg, added.fire_at, holder)
    if as_json:
        print_json(row)
        typer.echo(when, err=True)
    else:
        typer.echo(f"added slot {row['id']} for agent {row['agent_id']} at {row['fire_at']}")
        typer.echo(when)


def _daemon_of(cfg: Config, journal: Journal) -> Holder | None:
    """The live daemon holding this configuration's identifier, if any."""
    from calsched.journal.lease import live_holders

    return next((h for h in live_holders(journal.engine) if h.identifier == cfg.identifier), None)


def _when_it_fires(cfg: Config, fire_at: datetime, holder: Holder | None) -> str:
    """One line: when the slot fires, and whether a running daemon will fire it."""
    from calsched.daemon import DUE_POLL_S

    wait = (fire_at - datetime.now(UTC)).total_seconds()
    fires = (
        f"fires in {wait:.0f} s (at {short_time(iso(fire_at))})"
        if wait >= 1
        else f"fires now (due {short_time(iso(fire_at))})"
    )
    if cfg.backend_url is not None:
        return f"{fires} in the embedded calendar (read by `calsched run` without backend_url)"
    if holder is None:
        return (
            f"{fires}; no daemon is running for identifier {cfg.identifier!r}: "
            "start `calsched run` to fire it"
        )
    return (
        f"{fires}; the running daemon (pid {holder.pid} on {holder.host}) "
        f"picks it up within ~{DUE_POLL_S:g} s"
    )


_SLOT_CELLS = (
    field_cell("slot", "id"),
    field_cell("agent", "agent_id"),
    field_cell("title", "title", show="wide"),
    time_cell("fires at", "fire_at"),
    field_cell("status", "status", kind="word"),
    field_cell("attempt", "attempt", kind="word", show="wide"),
    note_cell(),
)


def slots_list(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            metavar="STATUS",
            help="Only slots with this calendar status (repeatable): scheduled, fired, "
            "in_progress, paused, completed or aborted.",
        ),
    ] = None,
    limit: LimitOption = DEFAULT_LIMIT,
    everything: AllOption = False,
    as_json: JsonOption = False,
    as_jsonl: JsonLinesOption = False,
) -> None:
    """List the embedded calendar's slots, by fire time, with their status there.

    Shows the first 50 unless told otherwise (--limit N, --all); says so when it
    leaves slots out.

    Example: calsched slots list --status scheduled --json
    """
    from calsched.backend.calendar import LocalCalendar

    form = output_form(as_json, as_jsonl)
    cfg = config_of(ctx)
    with open_journal(cfg) as journal:
        found = LocalCalendar(journal.engine).list(status or None)
    wanted = bound(limit, everything)
    shown = emit((entry.to_wire() for entry in islice(found, wanted)), form, _SLOT_CELLS)
    note_shown(shown, len(found), "slots", which="the first ")
    if not found:
        typer.echo("the calendar is empty", err=True)


# -- the reference backend over HTTP -----------------------------------------------------


def backend_serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(metavar="HOST", help="Address to bind (loopback by default).")
    ] = ("127.0.0.1"),
    port: Annotated[
        int, typer.Option(min=1, max=65535, metavar="PORT", help="Port to bind.")
    ] = 8780,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="File holding the API key clients must send (else CALSCHED_BACKEND_API_KEY).",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Serve the embedded calendar as the reference backend over HTTP (needs an API key).

    Example: CALSCHED_BACKEND_API_KEY=... calsched backend serve --port 8780
    """
    from calsched.daemon import serve_backend
    from calsched.logs import configure_logging

    cfg = config_of(ctx, backend_api_key_file=api_key_file)
    configure_logging(json_format=cfg.log_json, level=cfg.log_level)
    key = cfg.backend_key()
    if key is None:
        fail(
            "the reference backend needs an API key: set CALSCHED_BACKEND_API_KEY "
            "or pass --api-key-file PATH"
        )
    serve_backend(cfg, key.get_secret_value(), host=host, port=port)
